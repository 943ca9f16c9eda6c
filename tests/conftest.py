import contextlib
import io
import logging
import os
import runpy
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vitsweep.config import CONF_DIR, compose_config
from vitsweep.record import RunRecord

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "src" / "run.py"
CONF = CONF_DIR

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per test worker: no oversubscription
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

# A run small enough for a test: the digits set cut down, one block, no W&B.
TINY = ["data=digits", "data.subset=64", "model.depth=1", "trainer.batch_size=32", "logger=none"]
QUICK = [*TINY, "trainer.epochs=2"]


@pytest.fixture
def make_config():
    return compose_config


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def invoke(args: list[str], cwd: Path) -> Result:
    """`python src/run.py ARGS` as a user types it, from ``cwd``, but in this process: Hydra's
    own entry point with the same argv, so composition, callbacks, exit codes and output are
    the real ones, without a new interpreter per call."""
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level, argv, here = list(root.handlers), root.level, sys.argv, os.getcwd()
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = [str(RUN), *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(RUN), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:  # Hydra configures logging per run; leave everything as it was
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.argv = argv
        os.chdir(here)
    return Result(code, out.getvalue(), err.getvalue())


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


def spawn(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    """`python src/run.py ARGS` in a process of its own (for signals, locks and exit codes)."""
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, str(RUN), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # fmt: skip


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
