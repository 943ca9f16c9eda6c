"""What several test modules share: the tiny run's overrides, the command line run in this
process or in its own, the generic attention checks, image folders, and a size-only sweep.
Tests import from here, never from conftest or from one another."""

import contextlib
import io
import json
import logging
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate
from PIL import Image

from vitsweep.config import CONF_DIR, compose_config, options

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "src" / "run.py"
CONF = CONF_DIR

# A run small enough for a test: the digits set cut down, one block, no W&B.
TINY = ["data=digits", "data.subset=64", "model.depth=1", "trainer.batch_size=32", "logger=none"]
QUICK = [*TINY, "trainer.epochs=2"]

# A sweep's jobs on the one-node cluster of .ci/slurm: one CPU and 1 GB each, no GPU, 5 minutes.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.timeout_min=5",
]


def slurm_missing() -> str | None:
    """Why no SLURM cluster can take the tests' jobs here (None: one answers). ``.ci/run``
    starts one (``.ci/slurm``) and sets VITSWEEP_TEST_SLURM=1 and SLURM_CONF."""
    if not os.environ.get("VITSWEEP_TEST_SLURM"):
        return "no SLURM cluster: VITSWEEP_TEST_SLURM is unset (.ci/slurm starts one)"
    try:
        found = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"no SLURM cluster answers: sinfo: {err}"
    up = {"idle", "mix", "alloc", "comp"}  # a node that takes jobs, busy or not
    if found.returncode != 0 or not up & set(found.stdout.split()):
        return f"no SLURM node is up: sinfo says {(found.stdout + found.stderr).strip()[:200]!r}"
    return None


def sacct(job: str) -> str:
    """The state ``sacct`` gives a SLURM job (``12_1``), its allocation only."""
    command = ["sacct", "-j", job, "-X", "-n", "-P", "-o", "State"]
    return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()


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


def spawn(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    """`python src/run.py ARGS` in a process of its own (for signals, locks and exit codes)."""
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen(
        [sys.executable, str(RUN), *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


# The generic properties of an attention, as functions, so a test of a new variant runs them.
def build_attention(name: str, tokens: int, conf_dir: Path = CONF_DIR, **knobs):
    """Option ``name`` of conf/attention at dim 64, 4 heads, built as the model builds it."""
    node = compose_config([f"attention={name}"], conf_dir).model.attention
    return instantiate(node, **knobs)(dim=64, heads=4, num_tokens=tokens, nanovit_quirks=False)


def check_shape_and_finite_gradients(attention: torch.nn.Module, tokens: int = 50) -> None:
    x = torch.randn(3, tokens, 64, requires_grad=True)
    y = attention(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    grads = [x.grad, *(p.grad for p in attention.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad.abs().sum() > 0


def check_permutation_equivariance(attention: torch.nn.Module, tokens: int = 40) -> None:
    attention.eval()
    x = torch.randn(2, tokens, 64)
    perm = torch.randperm(tokens, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(attention(x[:, perm]), attention(x)[:, perm], atol=1e-4)


def check_finite_under_bf16_with_large_inputs(attention: torch.nn.Module, tokens: int = 1024):
    x = torch.randn(2, tokens, 64) * 30
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(attention(x)).all()


def draw(path: Path, colour: tuple[int, int, int], size: int = 20, mode: str = "RGB") -> None:
    """A small picture: a square of ``colour`` on black (the class is in the colour)."""
    image = Image.new("RGB", (size, size + 6))
    image.paste(colour, (4, 4, size - 4, size - 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path)


def make_folder(root: Path, classes: dict[str, tuple], per_class: int, mode: str = "RGB") -> Path:
    for name, colour in classes.items():
        for i in range(per_class):
            draw(root / name / f"{i}.png", tuple(min(255, c + 3 * i) for c in colour), mode=mode)
    return root


COLOURS = {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}


def size_only_sweep(cli, tmp_path, conf_dir=CONF, embeddings=None) -> list[str]:
    """Every attention of ``conf_dir`` with every embedding (or those given), sized
    (trainer.epochs=0): the lines of the sweep's headline table, one row per pair."""
    embeddings = embeddings or options("embedding", conf_dir)
    grid = [
        f"attention={','.join(options('attention', conf_dir))}",
        f"embedding={','.join(embeddings)}",
    ]
    result = cli(
        "-m", f"--config-dir={conf_dir}", *grid, "trainer.epochs=0", *TINY, "sweep_name=zoo"
    )
    assert result.returncode == 0, result.stderr
    summaries = sorted(tmp_path.glob("multirun/zoo/*/summary.json"))
    assert len(summaries) == len(options("attention", conf_dir)) * len(embeddings)
    assert all('"status": "sized"' in s.read_text() for s in summaries)
    headline = (tmp_path / "results" / "zoo" / "comparison.md").read_text().split("\n\n")[2]
    return headline.splitlines()  # the first table


def write_job(job: Path, config: dict, summary: dict) -> Path:
    """A job's record written by hand: its directory, config.yaml and summary.json."""
    job.mkdir(parents=True, exist_ok=True)
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "summary.json").write_text(json.dumps(summary))
    return job
