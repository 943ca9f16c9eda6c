"""The speed benchmark runs end to end on a tiny budget and writes its table (its figures are
measured, so only their shape and sense are checked here, never their values)."""

import sys

import pandas as pd
from torch import nn

import bench
from vitsweep.models.dropout import Dropout


def test_the_nanovit_style_reference_uses_torch_dropout_and_the_explicit_matrix():
    ours, nanovit = bench.build_preset("vit", nanovit_style=False), bench.build_preset("vit", True)
    assert any(type(m) is Dropout for m in ours.modules())
    assert not any(isinstance(m, Dropout) for m in nanovit.modules())
    assert any(type(m) is nn.Dropout for m in nanovit.modules())
    assert nanovit.blocks[0].attn.kernel.__name__ == "explicit_softmax_attention"


def test_bench_writes_a_table_of_every_path_against_the_reference(tmp_path, monkeypatch):
    argv = [
        "bench.py",
        "--presets",
        "vit",
        "--data",
        "synthetic",
        "--batch",
        "8",
        "--cpu-micro-batch",
        "4",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--eval-images",
        "8",
        "--peak-n",
        "128",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    table = pd.read_csv(next(tmp_path.glob("*.csv")))
    assert {"vitsweep", "nanovit-style reference"} <= set(table["path"])
    reference = table.set_index("path").loc["nanovit-style reference"]
    assert reference["vs_reference"] == 1.0 and reference["eval_vs_reference"] == 1.0
    assert (table["train_img_per_s"] > 0).all() and (table["of_peak"] > 0).all()
    assert "of peak" in next(tmp_path.glob("*.md")).read_text()
