"""Each attention variant against its definition, then properties they must all have.

The generic properties run on every option of conf/attention (built from its YAML, as training
builds it), so a new variant is checked by them with no edit here.
"""

import copy
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
from vitsweep.models import attention as attention_module
from vitsweep.models.attention import (
    LinearAttention,
    LinformerAttention,
    NystromAttention,
    PerformerAttention,
    SoftmaxAttention,
    at_least_fp32,
    explicit_softmax_attention,
    segment_means,
)
from vitsweep.models.vit import ATTENTION_ARGS


def qkv(
    n: int = 64,
    d: int = 16,
    heads: int = 2,
    std: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, heads, n, d, generator=g, dtype=dtype) * std for _ in range(3)]


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


def linear_quadratic_form(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    weights = phi_q @ phi_k.transpose(-2, -1)
    return (weights / weights.sum(dim=-1, keepdim=True)) @ v


def test_linear_in_float64_equals_its_quadratic_form_in_float64():
    q, k, v = qkv(dtype=torch.float64)
    attention = LinearAttention(32, 2, 64, eps=0.0).double()
    linear = attention.attend(q, k, v)
    assert linear.dtype == torch.float64
    error = relative_error(linear, linear_quadratic_form(q, k, v))
    assert error < 1e-12
    # Not an fp32 computation cast back: that is ~1e-7 off.
    fp32 = attention.float().attend(*(t.float() for t in (q, k, v))).double()
    assert error < relative_error(fp32, linear_quadratic_form(q, k, v)) / 1e3


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


def performer_formula(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """FAVOR+ as written, phi(x) = exp(w.x - |x|^2/2) on x * d^-1/4, with no stabilising shift
    (it cancels in the ratio) and no eps."""
    d = q.shape[-1]

    def phi(x: torch.Tensor) -> torch.Tensor:
        x = x * d**-0.25
        return torch.exp(x @ w.T - (x**2).sum(dim=-1, keepdim=True) / 2)

    weights = phi(q) @ phi(k).transpose(-2, -1)  # (N, N): an estimate of exp(q.k / sqrt(d))
    return (weights / weights.sum(dim=-1, keepdim=True)) @ v


def test_performer_in_float64_equals_its_formula_in_float64():
    torch.manual_seed(0)
    attention = PerformerAttention(32, 2, 64, features=64, eps=0.0).double()
    q, k, v = qkv(dtype=torch.float64, std=0.5)
    out = attention.attend(q, k, v)  # crashed: fp32 q against the float64 features
    assert out.dtype == torch.float64
    reference = performer_formula(q, k, v, attention.projection)
    error = relative_error(out, reference)
    assert error < 1e-12
    fp32 = attention.float().attend(*(t.float() for t in (q, k, v))).double()
    assert error < relative_error(fp32, reference) / 1e3


def test_performer_default_feature_count_is_d_ln_d():
    assert PerformerAttention(128, 8, 257).features == 44  # round(16 * ln 16)


@pytest.mark.parametrize("pinv_iterations", [0, 30])
def test_nystrom_equals_softmax_when_landmarks_are_the_tokens(pinv_iterations):
    q, k, v = qkv(n=24, std=0.5)
    nystrom = NystromAttention(32, 2, 24, landmarks=24, pinv_iterations=pinv_iterations)
    tolerance = 1e-4 if pinv_iterations == 0 else 1e-2
    assert relative_error(nystrom.attend(q, k, v), explicit_softmax_attention(q, k, v)) < tolerance


def test_nystrom_in_float64_equals_softmax_in_float64_when_landmarks_are_the_tokens():
    q, k, v = qkv(n=24, std=0.5, dtype=torch.float64)
    nystrom = NystromAttention(32, 2, 24, landmarks=24, pinv_iterations=0).double()
    out = nystrom.attend(q, k, v)
    assert out.dtype == torch.float64
    error = relative_error(out, explicit_softmax_attention(q, k, v))
    # fp32 gets ~1e-5 here (the pseudo-inverse magnifies its rounding); float64 far less.
    fp32 = nystrom.float().attend(*(t.float() for t in (q, k, v))).double()
    assert error < 1e-9
    assert error < relative_error(fp32, explicit_softmax_attention(q, k, v)) / 1e3


# (N, m) with m not dividing N: the landmark segments are then of two sizes.
UNEVEN = [(65, 32), (50, 32), (257, 32), (33, 32), (10, 3), (7, 4)]


def segment_bounds(n: int, m: int) -> list[tuple[int, int]]:
    """The m segments [start, stop) by hand: the n mod m segments of ceil(n/m) first."""
    sizes = [n // m + (i < n % m) for i in range(m)]
    stops = [sum(sizes[: i + 1]) for i in range(m)]
    return list(zip([0, *stops[:-1]], stops, strict=True))


@pytest.mark.parametrize(("n", "m"), [*UNEVEN, (64, 32), (24, 24)])
def test_nystrom_landmark_segments_partition_the_tokens(n, m):
    # segment_means of the identity: row j holds 1/|segment j| at its members, 0 elsewhere.
    weights = segment_means(torch.eye(n, dtype=torch.float64)[None, None], m)[0, 0]
    members = weights > 0
    assert (members.sum(dim=0) == 1).all(), "every token in exactly one landmark"
    sizes = members.sum(dim=1)
    assert set(sizes.tolist()) <= {n // m, -(-n // m)}
    assert (sizes == -(-n // m)).sum() == n % m or n % m == 0
    start = 0
    for row, size in zip(members, sizes.tolist(), strict=True):
        assert row.nonzero().flatten().tolist() == list(range(start, start + size)), "contiguous"
        start += size
    assert start == n
    assert torch.allclose(weights.sum(dim=1), torch.ones(m, dtype=torch.float64))


@pytest.mark.parametrize(("n", "m"), UNEVEN)
def test_nystrom_landmarks_are_the_means_of_disjoint_segments(n, m):
    x = torch.randn(2, 3, n, 5, dtype=torch.float64)
    by_hand = torch.stack([x[..., a:b, :].mean(dim=-2) for a, b in segment_bounds(n, m)], dim=-2)
    assert torch.allclose(segment_means(x, m), by_hand, rtol=0, atol=1e-14)


def nystrom_formula(q, k, v, landmarks: int) -> torch.Tensor:
    """Nystromformer's formula with the exact pseudo-inverse and landmarks taken by hand."""
    q = q * q.shape[-1] ** -0.5
    bounds = segment_bounds(q.shape[-2], landmarks)
    q_land, k_land = (torch.stack([t[..., a:b, :].mean(-2) for a, b in bounds], -2) for t in (q, k))
    kernel_1 = torch.softmax(q @ k_land.transpose(-2, -1), dim=-1)
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-2, -1), dim=-1)
    kernel_3 = torch.softmax(q_land @ k.transpose(-2, -1), dim=-1)
    return kernel_1 @ torch.linalg.pinv(kernel_2) @ kernel_3 @ v


@pytest.mark.parametrize(("n", "m"), [(65, 32), (50, 32)])
def test_nystrom_equals_its_formula_with_landmarks_computed_by_hand(n, m):
    q, k, v = qkv(n=n, std=0.5, dtype=torch.float64)
    nystrom = NystromAttention(32, 2, n, landmarks=m, pinv_iterations=0).double()
    assert relative_error(nystrom.attend(q, k, v), nystrom_formula(q, k, v, m)) < 1e-8


def overlapping_segment_means(x: torch.Tensor, m: int) -> torch.Tensor:
    """The old landmarks: adaptive_avg_pool1d's windows, which overlap when m does not divide N."""
    b, h, n, d = x.shape
    pooled = F.adaptive_avg_pool1d(x.reshape(b * h, n, d).transpose(1, 2), m)
    return pooled.transpose(1, 2).reshape(b, h, m, d)


def _nystrom_error(n: int, m: int, seeds: int = 4) -> float:
    """Mean relative error against exact softmax, as configured (6 Newton-Schulz steps)."""
    errors = []
    for seed in range(seeds):
        q, k, v = qkv(n=n, std=0.5, seed=seed)
        out = NystromAttention(32, 2, n, landmarks=m).attend(q, k, v)
        errors.append(relative_error(out, explicit_softmax_attention(q, k, v)))
    return sum(errors) / seeds


@pytest.mark.parametrize(("n", "m"), [(65, 32), (50, 32)])
def test_nystrom_disjoint_landmarks_approximate_better_than_overlapping_ones(n, m, monkeypatch):
    disjoint = _nystrom_error(n, m)
    monkeypatch.setattr(attention_module, "segment_means", overlapping_segment_means)
    overlapping = _nystrom_error(n, m)
    # measured (4 seeds): 65/32 0.122 against 0.162; 50/32 0.088 against 0.136
    assert disjoint < overlapping, (disjoint, overlapping)


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


def test_at_least_fp32_widens_to_fp32_and_keeps_float64():
    for dtype, wider in [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        assert at_least_fp32(torch.ones(2, dtype=dtype)).dtype == wider


@pytest.mark.parametrize("name", options("attention"))
def test_a_float64_module_computes_in_float64_and_agrees_with_its_float32_run(name):
    fp32 = build_attention(name, 50).eval()
    fp64 = copy.deepcopy(fp32).double()
    x = torch.randn(3, 50, 64, dtype=torch.float64)
    with torch.no_grad():
        out = fp64(x)
        again = fp32(x.float()).double()
    assert out.dtype == torch.float64
    assert relative_error(out, again) < 1e-5  # fp32 rounding: measured 2e-7 to 5e-7


def test_explicit_softmax_has_the_same_properties():
    attention = build_attention("softmax", 50, impl="explicit")
    check_shape_and_finite_gradients(attention)
    check_permutation_equivariance(build_attention("softmax", 40, impl="explicit"))
