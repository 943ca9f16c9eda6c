"""The table's columns, each declared once: where its value comes from in a run's record, how
the seeds of a row combine, how it is written, and whether the headline shows it.

A new metric is one ``Column`` here: reading, aggregating, the markdown and CSV tables all
follow this list (tests/test_report.py proves it with a throwaway column).
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """One column of the comparison table.

    ``value(config, summary)`` reads it from a run's record (its resolved config and its
    summary.json, or the same two from W&B). ``combine`` says how the seeds of one row make one
    cell: ``mean`` (mean ± std over the seeds that completed), ``first`` (the same for every
    seed: a size), ``each`` (the distinct values, joined), or ``worst`` (the value is a
    mapping, such as each class's top-1: averaged key by key over the completed seeds, the
    cell is the lowest key and its mean). ``shown``: ``always``, ``if varies`` (only when the
    rows differ in it: a table of one precision needs no precision column) or ``if present``
    (only when some row has it: validation numbers, for runs with a validation split)."""

    name: str
    heading: str
    value: Callable[[Record, Record], Any]
    combine: str = "first"
    fmt: str = "{}"
    headline: bool | str = False  # or "if varies": in the headline only when rows differ
    shown: str = "always"
    bounds: tuple[float, float] | None = None  # the values it can hold (a top-1: 0 to 100)

    def admits(self, value: Any) -> bool:
        """Whether a record's value can be this column's: a number where it is written as
        one, a mapping of numbers for ``worst``, any text for a text column."""
        if value is None:
            return True
        if self.combine == "worst":
            return isinstance(value, Mapping) and all(map(is_number_or_none, value.values()))
        if self.fmt == "{}":
            return isinstance(value, str | int | float) and not isinstance(value, bool)
        low, high = self.bounds or (-math.inf, math.inf)
        return is_number_or_none(value) and (value != value or low <= value <= high)


def is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def from_summary(key: str, scale: float = 1.0) -> Callable[[Record, Record], Any]:
    def read(config: Record, summary: Record) -> Any:
        value = summary.get(key)
        return value * scale if isinstance(value, int | float) and scale != 1.0 else value

    return read


def from_config(*path: str) -> Callable[[Record, Record], Any]:
    def read(config: Record, summary: Record) -> Any:
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        return node

    return read


def epoch_seconds(config: Record, summary: Record) -> float | None:
    """Train and test seconds of an epoch together (nanovit's "time per epoch")."""
    train_s, test_s = summary.get("train_s_per_epoch"), summary.get("test_s_per_epoch")
    return None if train_s is None else train_s + (test_s or 0.0)


TOP1 = (0.0, 100.0)  # a top-1 in %: anything else in a record is damage

# In table order: the columns that describe the model, then what each run measured.
# fmt: off
COLUMNS = [
    Column("sweep", "sweep", from_config("sweep_name"), "each", headline="if varies",
           shown="if varies"),  # a table of sweeps compared (report.py --compare)
    Column("embedding", "feature extraction", from_config("choices", "embedding")),
    Column("attention", "attention", from_config("choices", "attention")),
    Column("image_size", "image size", from_config("data", "image_size"), fmt="{:.0f}"),
    Column("dim", "dim", from_config("model", "dim"), fmt="{:.0f}"),
    Column("patch_size", "patch size", from_config("model", "embedding", "patch_size"),
           fmt="{:.0f}"),
    Column("tokens", "tokens", from_summary("tokens"), fmt="{:.0f}"),
    Column("heads", "heads", from_config("model", "heads"), fmt="{:.0f}"),
    Column("blocks", "blocks", from_config("model", "depth"), fmt="{:.0f}"),
    Column("params", "parameters", from_summary("params"), fmt="{:,.0f}", headline=True),
    Column("gflops_per_image", "GFLOPs/img", from_summary("flops_per_image", 1e-9),
           fmt="{:.3g}", headline=True),
    Column("best_top1", "best top-1 %", from_summary("best_test_acc", 100), "mean", "{:.2f}",
           headline=True, bounds=TOP1),
    Column("final_top1", "final top-1 %", from_summary("final_test_acc", 100), "mean", "{:.2f}",
           bounds=TOP1),
    Column("best_val", "best val top-1 %", from_summary("best_val_acc", 100), "mean", "{:.2f}",
           headline=True, shown="if present", bounds=TOP1),
    Column("test_at_best_val", "test top-1 at best val %",
           from_summary("test_acc_at_best_val", 100), "mean", "{:.2f}", headline=True,
           shown="if present", bounds=TOP1),
    Column("time_per_epoch_s", "s/epoch", epoch_seconds, "mean", "{:.2f}"),
    Column("train_s_per_epoch", "train s/epoch", from_summary("train_s_per_epoch"), "mean",
           "{:.2f}", headline=True),
    Column("test_s_per_epoch", "test s/epoch", from_summary("test_s_per_epoch"), "mean", "{:.2f}"),
    Column("train_img_per_s", "train img/s", from_summary("train_img_per_s"), "mean", "{:.0f}"),
    Column("worst_class", "worst class (top-1 %)", from_summary("per_class_top1"), "worst",
           "{:.2f}"),
    Column("peak_mem_mb", "peak MB", from_summary("peak_mem_mb"), "mean", "{:.0f}"),
    Column("epochs_done", "epochs", from_summary("epochs_done"), fmt="{:.0f}",
           headline="if varies"),  # a search's pruned trials
    Column("precision", "precision", from_summary("precision"), "each", shown="if varies"),
    Column("device", "device", from_summary("device"), "each"),
]
# fmt: on


def columns() -> list[Column]:
    """The table's columns (a function, so that a test can extend the list for one test)."""
    return list(COLUMNS)
