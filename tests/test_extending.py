"""A new attention variant is one class and one YAML: with nothing else edited, the generic
attention tests, a size-only sweep and the attention benchmark all pick it up."""

import json
import shutil
import textwrap

import pytest

from tests.helpers import (
    build_attention,
    check_finite_under_bf16_with_large_inputs,
    check_permutation_equivariance,
    check_shape_and_finite_gradients,
    size_only_sweep,
)
from vitsweep.config import CONF_DIR, options

pytestmark = pytest.mark.usefixtures("no_plots")  # figures: tests of their own

MODULE = '''
import torch

from vitsweep.models.attention import MultiHeadAttention


class MeanValueAttention(MultiHeadAttention):
    """Every token attends to every other equally: softmax with all scores equal."""

    def __init__(self, dim: int, heads: int, num_tokens: int, nanovit_quirks: bool = False,
                 gain: float = 1.0) -> None:
        super().__init__(dim, heads)
        self.gain = gain

    def attend(self, q, k, v):
        return self.gain * v.mean(dim=-2, keepdim=True).expand_as(v)
'''


@pytest.fixture
def with_new_variant(tmp_path, monkeypatch):
    """A throwaway package with the class, and a copy of conf/ with its one YAML."""
    (tmp_path / "throwaway").mkdir()
    (tmp_path / "throwaway" / "mean_value.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "throwaway"))
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "attention" / "mean_value.yaml").write_text(
        "# @package model.attention\n_target_: mean_value.MeanValueAttention\n"
        "_partial_: true\ngain: 1.0\n"
    )
    return conf


def test_the_generic_attention_tests_pick_up_a_new_variant(with_new_variant):
    conf = with_new_variant
    assert "mean_value" in options("attention", conf)
    for name in options("attention", conf):
        check_shape_and_finite_gradients(build_attention(name, 50, conf))
    new = build_attention("mean_value", 40, conf)
    check_permutation_equivariance(new)
    check_finite_under_bf16_with_large_inputs(new)


def test_the_size_only_sweep_picks_up_a_new_variant(with_new_variant, cli, tmp_path):
    rows = size_only_sweep(cli, tmp_path, with_new_variant, embeddings=["patch"])
    assert sum(line.startswith("| mean_value ") for line in rows) == 1


def test_the_attention_benchmark_picks_up_a_new_variant(with_new_variant):
    import bench_attention

    variants = bench_attention.variants(with_new_variant)
    assert "mean_value" in variants
    measured = bench_attention.measure("mean_value", 64, 2, 64, 4, 2, "cpu", with_new_variant)
    assert measured["seconds"] > 0


def test_a_new_metric_is_one_column_entry(monkeypatch, tmp_path):
    """A column declared once (where it comes from, how seeds combine, its format, headline
    or not) reaches the rows, the aggregate, the markdown and the CSV with nothing else
    touched."""
    import pandas as pd

    from vitsweep.report import columns as columns_module
    from vitsweep.report import comparison_table, row_from_run, to_markdown, write_report
    from vitsweep.report.columns import Column, from_summary

    loss = Column(
        "final_loss",
        "final train loss",
        from_summary("final_train_loss"),
        "mean",
        "{:.3f}",
        headline=True,
    )
    monkeypatch.setattr(columns_module, "COLUMNS", [*columns_module.COLUMNS, loss])
    runs = pd.DataFrame(
        [
            row_from_run(
                {"seed": seed, "choices": {"attention": attention}},
                {"status": "completed", "best_test_acc": 0.5, "final_train_loss": value},
                [f"attention={attention}", f"seed={seed}"],
                f"{attention}-{seed}",
            )
            for attention, seed, value in [
                ("softmax", 0, 1.0),
                ("softmax", 1, 2.0),
                ("linear", 0, 0.5),
                ("linear", 1, 0.5),
            ]
        ]
    )
    table = comparison_table(runs)
    assert list(table["final_loss"]) == [1.5, 0.5] and table["final_loss_std"][1] == 0
    headline = to_markdown(table, ["attention"], headline=True)
    assert "final train loss" in headline and "1.500 ± 0.707" in headline
    write_report(runs, pd.DataFrame(), tmp_path, tmp_path)
    assert "final_loss" in pd.read_csv(tmp_path / "comparison.csv").columns


def test_a_new_way_to_stop_is_one_class(tmp_path, capsys):
    """A stop declared once (its status, exit code and line) ends a real job the way every
    stop does: recorded in its summary, told in one line, the exit code it names."""
    from tests.helpers import QUICK
    from vitsweep.config import compose_config, plain
    from vitsweep.errors import Stopping
    from vitsweep.job import JobInfo, run_job

    class OutOfTime(Stopping, RuntimeError):
        status = "timed_out"
        exit_code = 3

    class Deadline:  # a training hook that stops the run after its first epoch
        def on_resume(self, history):
            pass

        def on_step(self, metrics, step):
            pass

        def on_epoch(self, row, step, training):
            raise OutOfTime(f"out of time after epoch {row['epoch']}")

    config = plain(compose_config(QUICK))
    with pytest.raises(SystemExit) as stopped:
        run_job(config, JobInfo(run_dir=tmp_path / "run"), hooks=[Deadline()])
    assert stopped.value.code == 3
    assert capsys.readouterr().err.strip() == "error: out of time after epoch 1"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["epochs_done"]) == ("timed_out", 1)
    assert summary["error"] == "out of time after epoch 1"
    in_a_sweep = run_job(config, JobInfo(run_dir=tmp_path / "job", multirun=True), [Deadline()])
    assert in_a_sweep.status == "timed_out"  # a sweep's job ends so, and the sweep goes on
