import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers import QUICK, invoke, slurm_missing
from vitsweep.config import compose_config
from vitsweep.record import RunRecord

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per test worker: no oversubscription
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def make_config():
    return compose_config


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """``invoke`` from the test's own directory (which it also makes the working one)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    return lambda *args: invoke(list(args), tmp_path)


@pytest.fixture(scope="session")
def finished_run_once(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("finished")
    done = invoke([*QUICK, "hydra.run.dir=run"], where)
    assert done.returncode == 0, done.stderr
    return where / "run"


@pytest.fixture
def finished_run(finished_run_once, tmp_path) -> Path:
    """A completed run of ``QUICK`` in ``tmp_path / "run"`` (trained once per test session)."""
    shutil.copytree(finished_run_once, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def signal_after_epoch(monkeypatch, request):
    """Send this process a signal once epoch ``n`` is recorded, as a user or SLURM would."""

    def arm(n: int, signum: int = signal.SIGTERM) -> None:
        end_epoch = RunRecord.end_epoch
        # As in a user's python process: Ctrl-C raises KeyboardInterrupt (a test worker's own
        # process may have set SIGINT otherwise).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

        def end_epoch_then_signal(self, row, *args):
            end_epoch(self, row, *args)
            if row["epoch"] == n:
                os.kill(os.getpid(), signum)

        monkeypatch.setattr(RunRecord, "end_epoch", end_epoch_then_signal)

    return arm


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A SLURM cluster that takes jobs (.ci/slurm's), or the test is skipped, saying why."""
    why = slurm_missing()
    if why:
        pytest.skip(why)


@pytest.fixture
def no_plots(request, monkeypatch):
    """Sweeps write their tables without drawing (most of a small sweep's report time); for
    tests whose point is not the figures, which have tests of their own (``@pytest.mark.plots``
    keeps them drawn)."""
    if request.node.get_closest_marker("plots"):
        return
    import vitsweep.report.pipeline
    import vitsweep.search.summary

    monkeypatch.setattr(vitsweep.report.pipeline, "draw", lambda *args, **kwargs: None)
    monkeypatch.setattr(vitsweep.search.summary, "write_plots", lambda *args, **kwargs: None)
