"""A new attention variant is one class and one YAML: with nothing else edited, the generic
attention tests, a size-only sweep and the attention benchmark all pick it up."""

import shutil
import textwrap

import pytest

from tests.test_attention import (
    build_attention,
    check_finite_under_bf16_with_large_inputs,
    check_permutation_equivariance,
    check_shape_and_finite_gradients,
)
from tests.test_config import size_only_sweep
from vitsweep.config import CONF_DIR, options

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
