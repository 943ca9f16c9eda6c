"""Each attention variant against its definition, then properties they must all have.

The generic properties run on every option of conf/attention (built from its YAML, as training
builds it), so a new variant is checked by them with no edit here.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_object

from tests.helpers import (
    build_attention,
    check_finite_under_bf16_with_large_inputs,
    check_permutation_equivariance,
    check_shape_and_finite_gradients,
)
from vitsweep.config import compose_config, options
from vitsweep.errors import ConfigError
from vitsweep.models.attention import (
    LinearAttention,
    LinformerAttention,
    NystromAttention,
    PerformerAttention,
    SoftmaxAttention,
    explicit_softmax_attention,
)
from vitsweep.models.vit import ATTENTION_ARGS


def qkv(n: int = 64, d: int = 16, heads: int = 2, std: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, heads, n, d, generator=g) * std for _ in range(3)]


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx - exact).norm() / exact.norm()).item()


def test_sdpa_equals_the_explicit_formula():
    q, k, v = qkv(n=257)
    exact = explicit_softmax_attention(q, k, v)
    assert torch.allclose(F.scaled_dot_product_attention(q, k, v), exact, atol=1e-5)
    by_hand = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v  # d = 16
    assert torch.allclose(exact, by_hand, atol=1e-6)


def test_softmax_impls_agree_as_modules():
    sdpa = SoftmaxAttention(64, 4, 50, impl="sdpa")
    explicit = SoftmaxAttention(64, 4, 50, impl="explicit")
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 50, 64)
    assert torch.allclose(sdpa(x), explicit(x), atol=1e-5)


def test_nanovit_quirks_scale_softmax_by_nanovits_one_over_sqrt_dim():
    q, k, v = qkv(d=16, heads=8)  # dim 128
    attention = SoftmaxAttention(128, 8, 64, nanovit_quirks=True)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 128**0.5, dim=-1) @ v
    assert torch.allclose(attention.attend(q, k, v), expected, atol=1e-5)


def test_linear_equals_its_quadratic_form():
    q, k, v = qkv()
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    weights = phi_q @ phi_k.transpose(-2, -1)  # (N, N), positive
    quadratic = (weights / weights.sum(dim=-1, keepdim=True)) @ v
    linear = LinearAttention(32, 2, 64, eps=0.0).attend(q, k, v)
    assert torch.allclose(linear, quadratic, atol=1e-5)


def _performer_error(features: int, draws: int = 8) -> float:
    q, k, v = qkv(n=128, std=0.5)
    exact = explicit_softmax_attention(q, k, v)
    errors = []
    for seed in range(draws):
        torch.manual_seed(seed)
        performer = PerformerAttention(32, 2, 128, features=features)
        errors.append(relative_error(performer.attend(q, k, v), exact))
    return sum(errors) / draws


def test_performer_approximates_softmax_better_with_more_features():
    errors = {m: _performer_error(m) for m in (16, 64, 256)}
    assert errors[16] > errors[64] > errors[256]
    assert errors[256] < 0.25, errors  # measured: 0.64, 0.30, 0.16 (1/sqrt(m)-like decay)


def test_performer_features_are_orthogonal_blocks():
    w = PerformerAttention(32, 2, 64, features=16).projection  # one block of d = 16 rows
    directions = w / w.norm(dim=1, keepdim=True)
    assert torch.allclose(directions @ directions.T, torch.eye(16), atol=1e-5)


def test_performer_redraws_on_schedule_and_not_in_eval():
    attention = PerformerAttention(32, 2, 10, features=8, redraw_interval=2)
    x = torch.randn(1, 10, 32)
    seen = []
    for _ in range(4):
        attention(x)
        seen.append(attention.projection.clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    attention.eval()
    attention(x)
    assert torch.equal(attention.projection, seen[3])


def test_performer_default_feature_count_is_d_ln_d():
    assert PerformerAttention(128, 8, 257).features == 44  # round(16 * ln 16)


@pytest.mark.parametrize("pinv_iterations", [0, 30])
def test_nystrom_equals_softmax_when_landmarks_are_the_tokens(pinv_iterations):
    q, k, v = qkv(n=24, std=0.5)
    nystrom = NystromAttention(32, 2, 24, landmarks=24, pinv_iterations=pinv_iterations)
    tolerance = 1e-4 if pinv_iterations == 0 else 1e-2
    assert relative_error(nystrom.attend(q, k, v), explicit_softmax_attention(q, k, v)) < tolerance


def test_nystrom_handles_lengths_the_landmarks_do_not_divide():
    q, k, v = qkv(n=257)
    out = NystromAttention(32, 2, 257, landmarks=32).attend(q, k, v)
    assert out.shape == v.shape and torch.isfinite(out).all()
    # A fair approximation still: far better than attending uniformly.
    exact = explicit_softmax_attention(q, k, v)
    uniform = v.mean(dim=-2, keepdim=True).expand_as(v)
    assert relative_error(out, exact) < relative_error(uniform, exact)


def test_linformer_projects_keys_and_values_to_k_rows():
    attention = LinformerAttention(32, 2, 64, k=8)
    q, k, v = qkv(n=64)
    expected = explicit_softmax_attention(q, attention.proj_k @ k, attention.proj_v @ v)
    assert torch.allclose(attention.attend(q, k, v), expected, atol=1e-5)


def test_linformer_rejects_another_token_count():
    attention = LinformerAttention(32, 2, 64)
    with pytest.raises(ConfigError, match="built for 64 tokens but got 65"):
        attention(torch.randn(1, 65, 32))


def test_every_attention_takes_the_same_first_arguments():
    for name in options("attention"):
        target = get_object(compose_config([f"attention={name}"]).model.attention._target_)
        first = list(inspect.signature(target).parameters)[: len(ATTENTION_ARGS)]
        assert tuple(first) == ATTENTION_ARGS, name


# Variants that are not equivariant as configured: Linformer mixes positions through learned
# projections; Nystrom's segment means depend on order unless every token is a landmark.
NOT_EQUIVARIANT = {"linformer": None, "nystrom": {"landmarks": 40, "pinv_iterations": 0}}


@pytest.mark.parametrize("name", options("attention"))
def test_shape_and_finite_gradients(name):
    check_shape_and_finite_gradients(build_attention(name, 50))


@pytest.mark.parametrize("name", options("attention"))
def test_permuting_tokens_permutes_the_output(name):
    if name in NOT_EQUIVARIANT and NOT_EQUIVARIANT[name] is None:
        pytest.skip(f"{name} is not permutation-equivariant")
    check_permutation_equivariance(build_attention(name, 40, **NOT_EQUIVARIANT.get(name, {})))


@pytest.mark.parametrize("name", options("attention"))
def test_finite_under_bf16_autocast_at_1024_tokens_with_large_inputs(name):
    check_finite_under_bf16_with_large_inputs(build_attention(name, 1024))


def test_explicit_softmax_has_the_same_properties():
    attention = build_attention("softmax", 50, impl="explicit")
    check_shape_and_finite_gradients(attention)
    check_permutation_equivariance(build_attention("softmax", 40, impl="explicit"))
