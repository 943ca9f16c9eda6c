"""The schema of conf/config.yaml: every block of settings, its defaults and its checks, and
which settings a resumed run or sweep may change.

    RunConfig        the top level: the groups, seed, sweep_name, dry_run
    TrainerSettings  trainer:      DataSettings  data:      ReportSettings  report:
    SearchSettings   search:

Each default lives here. The YAML files repeat some of them so that a user reads them where
they set them; ``tests/test_settings.py`` holds the two equal. Each range is checked when a
block is built (``__post_init__``); types and unknown keys are checked against these
signatures by ``vitsweep.fields.check_fields``.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vitsweep.errors import require, require_each
from vitsweep.stats import CORRECTIONS


def free_on_resume(default: Any = None) -> Any:
    """A settings field that does not change what a run computes (how it is shown, logged or
    reported, where its data lives): a resumed run or sweep may differ in it."""
    return dataclasses.field(default=default, metadata={"free_on_resume": True})


def check_sweep_name(name: Any) -> str:
    """A sweep's name is one path component: it names a folder under multirun/ and results/,
    and must never reach outside them."""
    text = str(name)
    ok = text not in ("", ".", "..") and not any(c in text for c in "/\\\0")
    require(ok, "sweep_name", name, "a single folder name (no '/', no '..')")
    return text


@dataclass
class RunConfig:
    """The top level of conf/config.yaml: the groups, and the few settings of their own."""

    seed: int
    trainer: dict[str, Any]
    model: dict[str, Any]
    optim: dict[str, Any]
    device: dict[str, Any]
    data: dict[str, Any]
    logger: dict[str, Any] = free_on_resume()
    sweep_name: str | None = free_on_resume()  # checked by the sweep itself
    dry_run: bool = free_on_resume(False)  # list the jobs, sized, and run none
    report: dict[str, Any] | None = free_on_resume()  # how a sweep's table compares rows
    search: dict[str, Any] | None = None  # a search's settings (SearchSettings)

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**63, "seed", self.seed, "an integer from 0 to 2**63 - 1")
        if self.sweep_name is not None:
            check_sweep_name(self.sweep_name)


@dataclass
class TrainerSettings:
    """The ``trainer:`` block of conf/config.yaml; each range is checked when it is built."""

    epochs: int = 40  # 0: build, size and record without training
    batch_size: int = 128
    micro_batch_size: int | None = None  # split each batch (same gradient; faster on CPU)
    eval_batch_size: int = 512
    precision: str = "auto"  # auto (bf16 on CUDA GPUs from Ampere on, else fp32) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    label_smoothing: float = 0.1
    warmup_epochs: float = 0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = None  # clip the gradient norm to this
    eval_interval: int = 1
    log_every: int = free_on_resume(10)
    progress: bool = free_on_resume(True)
    resume: bool = free_on_resume(False)  # continue from the run directory's checkpoint

    def __post_init__(self) -> None:
        s, positive, optional = self, "a positive integer", "a positive integer or null"
        require_each("trainer", [
            ("epochs", s.epochs, s.epochs >= 0, "an integer >= 0 (0 sizes only)"),
            ("batch_size", s.batch_size, s.batch_size >= 1, positive),
            ("eval_batch_size", s.eval_batch_size, s.eval_batch_size >= 1, positive),
            ("micro_batch_size", s.micro_batch_size,
             s.micro_batch_size is None or s.micro_batch_size >= 1, optional),
            ("precision", s.precision, s.precision in ("auto", "fp32", "bf16"),
             "auto, fp32 or bf16"),
            ("label_smoothing", s.label_smoothing, 0 <= s.label_smoothing < 1,
             "a probability in [0, 1)"),
            ("warmup_epochs", s.warmup_epochs, s.warmup_epochs >= 0, "a number >= 0"),
            ("min_lr_ratio", s.min_lr_ratio, 0 <= s.min_lr_ratio <= 1, "a number in [0, 1]"),
            ("grad_clip", s.grad_clip, s.grad_clip is None or s.grad_clip > 0,
             "a positive number or null"),
            ("eval_interval", s.eval_interval, s.eval_interval >= 1, positive),
            ("log_every", s.log_every, s.log_every >= 1, positive),
        ])  # fmt: skip


@dataclass
class DataSettings:
    """The ``data:`` block (conf/data/*.yaml); each range is checked when it is built.
    ``channels``, ``num_classes``, ``mean`` and ``std`` may be null: read from the training
    split (``vitsweep.data.complete_settings``), as ``data=folder`` does."""

    source: dict[str, Any]  # what loads the set: a _target_ and its arguments
    name: str
    image_size: int
    channels: int | None = None
    num_classes: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    root: str = free_on_resume("data")
    subset: int | None = None  # keep the first N images of each split
    val_fraction: float = 0.0  # held out of the training split, stratified (0: none)
    crop_padding: int = 4  # random crop of the image zero-padded by this; 0: no crop
    flip: bool = True  # random horizontal flip (off for digits: a mirrored 2 is no 2)
    loader: str = "device"
    workers: int = free_on_resume(0)

    def __post_init__(self) -> None:
        d, positive = self, "a positive integer"
        per_channel = f"one number per channel ({self.channels})"
        require_each("data", [
            ("image_size", d.image_size, d.image_size >= 1, positive),
            ("channels", d.channels, d.channels is None or d.channels >= 1, positive),
            ("num_classes", d.num_classes, d.num_classes is None or d.num_classes >= 2,
             "an integer >= 2"),
            ("mean", d.mean, d.mean is None or d.channels is None or len(d.mean) == d.channels,
             per_channel),
            ("std", d.std, d.std is None or d.channels is None or len(d.std) == d.channels,
             per_channel),
            ("std", d.std, d.std is None or all(s > 0 for s in d.std), "positive numbers"),
            ("subset", d.subset, d.subset is None or d.subset >= 1, "a positive integer or null"),
            ("val_fraction", d.val_fraction, 0 <= d.val_fraction < 1, "a number in [0, 1)"),
            ("crop_padding", d.crop_padding, d.crop_padding >= 0, "an integer >= 0 (0: no crop)"),
            ("loader", d.loader, d.loader in ("device", "torchvision"), "device or torchvision"),
            ("workers", d.workers, d.workers >= 0, "an integer >= 0"),
        ])  # fmt: skip

    @property
    def sized_by_data(self) -> bool:
        """Whether some of the sizes come from the data itself (it must be read first)."""
        return None in (self.channels, self.num_classes, self.mean, self.std)

    def model_sizes(self) -> dict[str, int]:
        """What the model is sized by: the image's side, its channels, the classes."""
        return {
            "image_size": self.image_size,
            "in_channels": self.channels,
            "num_classes": self.num_classes,
        }


PRUNERS = ("median", "asha", "hyperband", "none")
SAMPLERS = ("tpe", "random")
SCHEMES = (
    "sqlite:///",
    "postgresql://",
    "postgresql+psycopg://",
    "postgresql+psycopg2://",
    "journal:",
)
KINDS = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}


@dataclass
class SearchSettings:
    """The ``search:`` block (conf/search/*.yaml): the space and how it is searched."""

    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> its distribution
    trials: int = free_on_resume(20)  # in total, over every worker (a resume may raise it)
    workers: int = free_on_resume(1)  # jobs the launcher runs, each an Optuna worker
    pruner: str = "median"  # median | asha | hyperband | none
    startup_epochs: int = 1  # the first epochs of a trial are never pruned
    sampler: str = "tpe"  # tpe | random
    sampler_seed: int = 0
    storage: str | None = None  # null: sqlite:///<sweep dir>/study.db; journal:PATH; postgresql://
    heartbeat_s: int = 60  # RDB storages: a worker silent this long has its trial retried
    worker: int = free_on_resume(0)  # this job's number among the workers (the grid sets it)
    trial: int | None = free_on_resume()  # a trial's number, set by its worker: its own row

    def __post_init__(self) -> None:
        s = self
        require_each("search", [
            ("space", s.space, bool(s.space), "a mapping of settings to distributions"),
            ("trials", s.trials, s.trials >= max(1, s.workers), f"at least search.workers "
             f"({s.workers}): every worker runs trials"),
            ("workers", s.workers, s.workers >= 1, "a positive integer"),
            ("pruner", s.pruner, s.pruner in PRUNERS, ", ".join(PRUNERS)),
            ("startup_epochs", s.startup_epochs, s.startup_epochs >= 0, "an integer >= 0"),
            ("sampler", s.sampler, s.sampler in SAMPLERS, ", ".join(SAMPLERS)),
            ("sampler_seed", s.sampler_seed, 0 <= s.sampler_seed < 2**32 - s.workers,
             "an integer from 0 to 2**32 - 1 - search.workers"),
            ("storage", s.storage, s.storage is None or s.storage.startswith(SCHEMES),
             "null, sqlite:///PATH, journal:PATH or postgresql://USER@HOST/DB"),
            ("heartbeat_s", s.heartbeat_s, s.heartbeat_s >= 1, "a positive integer"),
        ])  # fmt: skip
        for key, spec in s.space.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            require(
                kind in KINDS and all(k in spec for k in KINDS[kind]),
                f"search.space.{key}",
                spec,
                "{type: float|int, low, high[, log, step]} or {type: categorical, choices: [...]}",
            )


@dataclass
class ReportSettings:
    """The ``report:`` block: how a sweep's table compares its rows."""

    baseline: int | str | None = None  # a row number (from 1) or choices; null: the first row
    confidence: float = 0.95  # of the intervals; a difference is marked at p < 1 - confidence
    correction: str = "holm"  # of the p-values for the rows compared: holm | bonferroni | none

    def __post_init__(self) -> None:
        require(0 < self.confidence < 1, "report.confidence", self.confidence, "a number in (0, 1)")
        require(
            self.correction in CORRECTIONS,
            "report.correction",
            self.correction,
            " | ".join(CORRECTIONS),
        )


BLOCKS = {"trainer": TrainerSettings, "data": DataSettings, "search": SearchSettings}
# What the record adds to the config: the group choices (compared on resume), the command
# line as typed and what was read from the data (neither of which changes the run).
RECORDED = {"choices": False, "overrides": True, "from_data": True}


def may_differ_on_resume(key: str) -> bool:
    """Whether a dotted config key (``trainer.progress``, ``report.baseline``) is a setting a
    resumed run may change: marked ``free_on_resume`` where it is declared."""
    head, _, rest = key.lstrip("+~").partition(".")
    if RECORDED.get(head, False):
        return True
    declared = {f.name: f for f in dataclasses.fields(RunConfig)}
    if head in declared and declared[head].metadata.get("free_on_resume"):
        return True
    if head in BLOCKS and rest:
        inner = {f.name: f for f in dataclasses.fields(BLOCKS[head])}
        setting = inner.get(rest.split(".")[0])
        return bool(setting and setting.metadata.get("free_on_resume"))
    return False


def compared_on_resume(config: dict[str, Any]) -> dict[str, Any]:
    """What must match for a run to be resumed: the config less what may differ."""
    kept = {k: v for k, v in config.items() if not may_differ_on_resume(k)}
    if isinstance(kept.get("choices"), dict):  # a free setting's group choice (logger) is free
        kept["choices"] = {g: c for g, c in kept["choices"].items() if not may_differ_on_resume(g)}
    for block in BLOCKS:
        if isinstance(kept.get(block), dict):
            kept[block] = {
                k: v for k, v in kept[block].items() if not may_differ_on_resume(f"{block}.{k}")
            }
    return kept
