"""hydra-submitit-launcher's SLURM launcher, with what a real cluster does to a job handled.

In the sweep's process (``launch``): a grid larger than the cluster's ``MaxArraySize``, and a
request the partition refuses (``EnforcePartLimits``), are one line and exit 2 before any job
runs; a job that comes back without a result (cancelled, timed out, out of memory, its node
lost, or failed) is not the end of the sweep: how SLURM ended it (``sacct``) goes into its
directory (``slurm.json``), where the table finds it, and the sweep goes on to its table
(Hydra's ``on_multirun_end``), which says what did not finish and exits 1.

In the job (``__call__``): the job is SLURM's now, not a worker of the sweep's process (which
may end, or live on another machine); and a job whose record says it failed ends with an
error, so that ``sacct`` says FAILED (hydra #1928). A requeued job runs this same task again;
``vitsweep.job`` carries it on from its last whole epoch.
"""

import contextlib
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

from vitsweep.errors import ConfigError, end_with
from vitsweep.signals import SWEEP_PID
from vitsweep.slurm import (
    SUBMITTED,
    Fate,
    check_array_size,
    failed_record,
    fate_of,
    max_array_size,
    refusal,
    report_command,
    submit_report_job,
    write_fate,
)

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as SubmititSlurmLauncher,
    )
except ImportError:  # no launchers extra: the class below stays abstract, and Hydra, finding
    # no plugin here, warns of nothing on every run
    from hydra.plugins.launcher import Launcher as SubmititSlurmLauncher

log = logging.getLogger(__name__)
REPORT_PY = Path(__file__).resolve().parents[2] / "report.py"  # src/report.py: the table's job
REPORT_FLAGS = ("baseline", "confidence", "correction")  # report.* as report.py's flags


class JobFailed(RuntimeError):
    """Raised in a job whose record says it failed: its SLURM job fails with it."""


class SlurmLauncher(SubmititSlurmLauncher):
    def __call__(self, sweep_overrides: list[str], *args: Any) -> JobReturn:
        # Only a worker process of the sweep's own stops when the sweep's process ends; a
        # SLURM job carries on (even on the sweep's own machine).
        os.environ.pop(SWEEP_PID, None)
        ret = super().__call__(sweep_overrides, *args)
        why = failed_record(Path(str(ret.hydra_cfg.hydra.runtime.output_dir)))
        if why is not None:
            raise JobFailed(why)
        return ret

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        try:
            check_array_size(len(job_overrides), max_array_size())
            jobs = self._submit(job_overrides, initial_job_idx)
        except ConfigError as err:
            end_with(err)
        except Exception as err:  # sbatch refused: the partition cannot meet the request
            end_with(ConfigError(f"SLURM refused the sweep's jobs: {refusal(err)}"))
        numbered = list(enumerate(zip(jobs, job_overrides), start=initial_job_idx))
        for num, (job, overrides) in numbered:  # a table made meanwhile shows it pending
            write_fate(self._job_dir(list(overrides), num), Fate(job.job_id, SUBMITTED), overrides)
        if not self.params.get("wait", True):
            return self._go(jobs[0].job_id, job_overrides)
        return [self._outcome(job, list(overrides), num) for num, (job, overrides) in numbered]

    def _go(self, array_job: str, job_overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
        """Submit and go: one more job writes the table once every job has ended; this
        process returns at once (``ComparisonReport`` says so instead of a table)."""
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        results = OmegaConf.select(self.config, "hydra.callbacks.comparison.results_dir")
        args = ["--results", str(Path(str(results or "results")).resolve())]
        report = self.config.get("report") or {}
        args += [f"--{k}={report[k]}" for k in REPORT_FLAGS if report.get(k) is not None]
        command = report_command(sys.executable, REPORT_PY, sweep_dir, args)
        try:
            job = submit_report_job(array_job, sweep_dir, command, self.params.get("partition"))
        except ConfigError as err:
            end_with(err)
        log.info("submitted; SLURM job %s writes the table once they have all ended", job)
        return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED) for o in job_overrides]

    def _executor(self) -> Any:
        """submitit's executor with this launcher's parameters, as the plugin builds it."""
        import submitit  # as the plugin does: plugin discovery stays fast

        init_keys = {"submitit_folder", "max_num_timeout", "wait"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params.get("max_num_timeout", 0),
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                key if key in shared else f"{self._EXECUTOR}_{key}": value
                for key, value in self.params.items()
                if key not in init_keys
            }
        )
        return executor

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        assert self.config is not None
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        params = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            state = Singleton.get_state()
            params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", state))
        # submitit prints sbatch's refusal as well as raising it: said once, by ``launch``
        with contextlib.redirect_stderr(io.StringIO()):
            return executor.map_array(self, *zip(*params))

    def _outcome(self, job: Any, overrides: list[str], num: int) -> JobReturn:
        """The job's return; for one that came back without a result, how SLURM ended it,
        kept in its directory (the table reads it) and said in one line."""
        from submitit.core.utils import UncompletedJobError

        try:
            return job.results()[0]
        except UncompletedJobError:
            fate = fate_of(job.job_id)
            write_fate(self._job_dir(overrides, num), fate, overrides)
            log.warning("job %d did not finish: %s", num, fate.words())
            # Not FAILED: Hydra would raise it before the table is written; the table says it.
            return JobReturn(overrides=overrides, status=JobStatus.COMPLETED)

    def _job_dir(self, overrides: list[str], num: int) -> Path:
        """Where job ``num`` of the sweep has (or would have had) its directory."""
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        if subdir == "${hydra.job.num}":  # the usual one: no need to compose the job's config
            return sweep_dir / str(num)
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = num
        return sweep_dir / str(config.hydra.sweep.subdir)
