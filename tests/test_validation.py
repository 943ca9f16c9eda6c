"""A validation split: carved out of the training split, stratified and fixed, never trained
on; every evaluated epoch records it, and the record and the table carry the honest number,
the test top-1 at the best validation epoch."""

import json

import pandas as pd
import torch

from tests.helpers import TINY
from vitsweep.config import compose_config
from vitsweep.data import load_splits
from vitsweep.report import comparison_table, row_from_run, to_markdown
from vitsweep.settings import DataSettings


def _digits(**changes) -> DataSettings:
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(compose_config(["data=digits"]).data, resolve=True)
    return DataSettings(**(data | changes))


def _rows(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def test_the_validation_split_is_stratified_fixed_and_apart_from_training():
    whole = load_splits(_digits())
    splits = load_splits(_digits(val_fraction=0.25))
    assert whole.val is None and splits.val is not None
    assert len(splits.train) + len(splits.val) == len(whole.train)
    assert splits.test.images.equal(whole.test.images)  # the test set is untouched
    for c in range(10):  # a quarter of every class
        members = int((whole.train.labels == c).sum())
        assert int((splits.val.labels == c).sum()) == round(members * 0.25)
    assert not _rows(splits.val.images) & _rows(splits.train.images)
    again = load_splits(_digits(val_fraction=0.25))
    assert again.val.images.equal(splits.val.images)  # the same images, run after run


def test_a_run_with_a_validation_split_records_the_test_top1_at_its_best_epoch(cli, tmp_path):
    result = cli(
        *TINY,
        "data.subset=200",
        "model.dim=32",
        "trainer.epochs=3",
        "data.val_fraction=0.25",
        "hydra.run.dir=run",
    )
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert {"val_acc", "val_loss", "test_acc"} <= set(history.columns)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    best = history.loc[history["val_acc"].idxmax()]
    assert summary["best_val_acc"] == best["val_acc"]
    assert summary["best_val_epoch"] == best["epoch"]
    assert summary["test_acc_at_best_val"] == best["test_acc"]
    assert summary["val_images"] == 50 and summary["train_images"] == 150


def _run(attention, seed, test, at_best_val=None):
    summary = {"status": "completed", "best_test_acc": test, "final_test_acc": test}
    if at_best_val is not None:
        summary |= {"best_val_acc": at_best_val + 0.01, "test_acc_at_best_val": at_best_val}
    return row_from_run(
        {"seed": seed}, summary, [f"attention={attention}", f"seed={seed}"], f"{attention}-{seed}"
    )


def test_the_table_shows_the_test_top1_at_the_best_validation_epoch_where_runs_have_it():
    runs = pd.DataFrame([_run("softmax", 0, 0.80, 0.75), _run("linear", 0, 0.70, 0.66)])
    headline = to_markdown(comparison_table(runs), ["attention"], headline=True)
    assert "test top-1 at best val %" in headline and "75.00" in headline
    plain = pd.DataFrame([_run("softmax", 0, 0.80), _run("linear", 0, 0.70)])
    assert "best val" not in to_markdown(comparison_table(plain), ["attention"])
