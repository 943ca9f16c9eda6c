"""What a job learns from SLURM, and what a sweep asks it, without Hydra.

- ``restarts``: how often SLURM has started this job before (a requeue, a preemption, a
  self-requeue near the time limit): a restarted job carries on in its own directory.
- ``Fate`` and ``fate_of``: what SLURM says of a job (``sacct``'s state, reason and exit
  code). The launcher writes ``slurm.json`` into each job's directory as it submits it, and
  again with how SLURM ended a job that came back without a result; the table reads it
  (``merge_fate``, ``live_fate``), so a job lost for good is a row with SLURM's reason, and a
  table made while the sweep runs (``src/report.py``) shows which jobs are pending or running.
- ``check_array_size`` and ``refusal``: a grid larger than ``MaxArraySize``, and a request the
  partition refuses at ``sbatch``, each one line before anything runs.
- ``failed_record``: a job whose record says it failed, so that its SLURM job fails too
  (``sacct`` says FAILED, not COMPLETED).
- ``submit_report_job``: submit and go (``hydra.launcher.wait=false``): one more job, which
  starts once every job of the sweep's array has ended and writes its table.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vitsweep.errors import ConfigError
from vitsweep.files import write_atomic
from vitsweep.record.summary import FINISHED

FATE = "slurm.json"  # in a job's directory: how SLURM ended a job that returned no result
# The record knows better than SLURM: a failure of its own, or a time limit with no requeue left.
FAILED_ITSELF = ("failed", "diverged", "unreadable", "timeout")
SACCT_TRIES = 10  # accounting lags the controller by a moment after a job ends
SUBMITTED = "SUBMITTED"  # written at submission, before SLURM has said anything of the job
# States of a job that is not over: it may still start, run, or start again.
LIVE = (SUBMITTED, "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED")


def restarts(environ: Mapping[str, str]) -> int:
    """How many times SLURM started this job before this start (0 outside SLURM)."""
    count = environ.get("SLURM_RESTART_COUNT", "")
    return int(count) if count.isdigit() else 0


def job_id(environ: Mapping[str, str]) -> str | None:
    """This job's SLURM id as ``sacct`` and ``scontrol`` take it (``12_3`` in an array)."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else environ.get("SLURM_JOB_ID")


@dataclass(frozen=True)
class Fate:
    """How SLURM says a job ended: ``state`` as ``sacct`` spells it (CANCELLED, TIMEOUT,
    OUT_OF_MEMORY, NODE_FAIL, FAILED, ...), its reason and exit code."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: str = ""

    @property
    def status(self) -> str:
        """The record's word for it: ``CANCELLED by 0`` is ``cancelled``."""
        return self.state.split()[0].lower() if self.state else "lost"

    def words(self) -> str:
        said = [self.state or "no state"]
        said += [f"reason {self.reason}"] if self.reason not in ("", "None") else []
        said += [f"exit code {self.exit_code}"] if self.exit_code else []
        return f"SLURM job {self.job_id}: {', '.join(said)}"


def names(listed: str, job: str) -> bool:
    """Whether ``sacct``'s JobID ``listed`` is ``job``: itself, or an array's tasks that never
    started, kept as one line (``20_[1-2%1]`` holds ``20_2``)."""
    if listed == job:
        return True
    array, _, task = job.partition("_")
    spec = listed.removeprefix(f"{array}_[").removesuffix("]").split("%")[0]
    if not task.isdigit() or spec == listed or not listed.endswith("]"):
        return False
    for part in spec.split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and int(low) <= int(task) <= int(high or low):
            return True
    return False


def parse_sacct(job: str, text: str) -> Fate | None:
    """``sacct -X -n -P -o JobID,State,Reason,ExitCode``'s line for ``job`` (None: none yet)."""
    lines = [line.split("|") for line in text.splitlines() if line.strip()]
    found = [fields for fields in lines if len(fields) >= 4 and names(fields[0].strip(), job)]
    if not found:
        return None
    state, reason, exit_code = (field.strip() for field in found[-1][1:4])
    return Fate(job, state, reason, exit_code)


def fate_of(job: str, tries: int = SACCT_TRIES) -> Fate:
    """What ``sacct`` says of ``job`` once it has ended (it may lag the job by a second)."""
    fate = Fate(job, "")
    for _ in range(tries):
        listed = job.partition("_")[0]  # the whole array: its unstarted tasks are one line
        command = ["sacct", "-j", listed, "-X", "-n", "-P", "-o", "JobID,State,Reason,ExitCode"]
        try:
            found = subprocess.run(command, capture_output=True, text=True, timeout=30)
            fate = parse_sacct(job, found.stdout) or fate
        except (OSError, subprocess.SubprocessError):
            break
        if fate.state and fate.state not in LIVE:
            break
        time.sleep(1)
    return fate


def write_fate(job_dir: Path, fate: Fate, overrides: Iterable[str]) -> None:
    """Keep how SLURM ended a job in its directory (made where the job never started)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    kept = asdict(fate) | {"status": fate.status, "overrides": list(overrides)}
    write_atomic(job_dir / FATE, json.dumps(kept, indent=2) + "\n")


def read_fate(job_dir: Path) -> dict[str, Any] | None:
    try:
        fate = json.loads((job_dir / FATE).read_text())
    except (OSError, ValueError):
        return None
    return fate if isinstance(fate, dict) else None


def live_fate(fate: dict[str, Any]) -> dict[str, Any]:
    """A job's ``slurm.json`` as SLURM sees the job now, where it was not over when written
    (one ``sacct`` call; as written where SLURM does not answer)."""
    if fate.get("state") not in LIVE or not fate.get("job_id"):
        return fate
    now = fate_of(str(fate["job_id"]), tries=1)
    return fate | asdict(now) | {"status": now.status} if now.state else fate


def merge_fate(summary: Mapping[str, Any], fate: Mapping[str, Any] | None) -> dict[str, Any]:
    """A job's summary as the table reads it, with what SLURM says of it. A record that
    finished stands; one that failed by itself keeps its status, with SLURM's words added; a
    running record of a running job stands; any other (interrupted, stopped, none at all)
    takes SLURM's status (pending, requeued, cancelled, timeout, ...)."""
    summary = dict(summary)
    status, state = summary.get("status"), str(fate.get("state", "")) if fate else ""
    if not fate or status in FINISHED or (status == "running" and state in LIVE):
        return summary
    said = Fate(
        str(fate.get("job_id", "")),
        state,
        str(fate.get("reason", "")),
        str(fate.get("exit_code", "")),
    ).words()
    if status in FAILED_ITSELF or (status and state == "COMPLETED"):
        summary["error"] = f"{summary.get('error') or status} ({said})"
        return summary
    epochs = summary.get("epochs_done") or 0
    unstarted = "not started yet" if state in LIVE else "it never started"
    recorded = f"; its record: {status} after {epochs} epochs" if status else f"; {unstarted}"
    return summary | {"status": str(fate.get("status") or "lost"), "error": said + recorded}


def failed_record(job_dir: Path) -> str | None:
    """Why a job's record says it did not finish (None: it finished, or there is none)."""
    try:
        summary = json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    status = summary.get("status") if isinstance(summary, dict) else None
    if status is None or status in FINISHED:
        return None
    return f"{job_dir}: {status}: {summary.get('error') or 'see run.log'}"


def max_array_size() -> int | None:
    """The cluster's ``MaxArraySize`` (None where ``scontrol`` does not say)."""
    try:
        shown = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", shown, re.MULTILINE)
    return int(found.group(1)) if found else None


def check_array_size(jobs: int, most: int | None) -> None:
    """A grid is one job array: one larger than the cluster allows is refused before any job
    is submitted (SLURM would refuse the array, or take its first part only)."""
    if most is not None and jobs > most:
        raise ConfigError(
            f"the grid has {jobs} jobs but this cluster's MaxArraySize is {most}: split the "
            f"grid into sweeps of at most {most} jobs (each its own sweep_name)"
        )


def refusal(err: BaseException) -> str:
    """``sbatch``'s own line from a failed submission (``sbatch: error: ...``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if "error:" in line] or lines or [type(err).__name__]
    return said[-1].removeprefix("sbatch: ").removeprefix("error: ")


REPORT_JOB = "slurm_report.json"  # in a sweep's directory: the job that writes its table


def report_command(python: str, report_py: Path, sweep_dir: Path, args: list[str]) -> str:
    """The shell command of the job that writes a sweep's table."""
    return shlex.join([python, str(report_py), str(sweep_dir), *args])


def submit_report_job(array_job: str, sweep_dir: Path, command: str, partition: str | None) -> str:
    """Submit the job that runs ``command`` once every job of ``array_job`` has ended, however
    it ended; returns its id and keeps it in the sweep's directory, with who submitted it."""
    sbatch = [
        "sbatch",
        "--parsable",
        f"--dependency=afterany:{array_job.split('_')[0]}",
        "--kill-on-invalid-dep=yes",
        "--cpus-per-task=1",
        "--mem=2G",
        "--time=30",
        f"--job-name={sweep_dir.name}-table",
        f"--output={sweep_dir / 'report-%j.out'}",
        *([f"--partition={partition}"] if partition else []),
        f"--wrap={command}",
    ]
    done = subprocess.run(sbatch, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"the table's job was not taken: {done.stderr.strip() or done.stdout}")
    job = done.stdout.strip().split(";")[0]
    about = {"job_id": job, "after": array_job, "submitter": submitter(), "command": command}
    write_atomic(sweep_dir / REPORT_JOB, json.dumps(about, indent=2) + "\n")
    return job


def submitter() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def submitted_here(sweep_dir: Path) -> str | None:
    """The id of the table's job, if this very process submitted the sweep without waiting."""
    try:
        about = json.loads((sweep_dir / REPORT_JOB).read_text())
    except (OSError, ValueError):
        return None
    return str(about.get("job_id")) if about.get("submitter") == submitter() else None
