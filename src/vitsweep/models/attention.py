"""Attention mechanisms. Each is one ``nn.Module`` mapping ``(B, N, D) -> (B, N, D)``.

Every class is built with the same four arguments, ``(dim, heads, num_tokens, nanovit_quirks)``,
and uses what it needs of them (only Linformer needs the token count, only softmax has a nanovit
quirk); anything after those is the mechanism's own knob, set from its YAML file in
``conf/attention/``. Their annotations are the knobs' types and their constructors check the
ranges, so a new variant declares its own settings. They share one frame,
``MultiHeadAttention``: project to q, k, v, split heads, ``attend``, merge, project out. A
variant is its ``attend(q, k, v)`` on (B, H, N, d) tensors, which is what the tests check
against each mechanism's definition.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.errors import ConfigError, require


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*d) -> (B, H, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H*d)."""
    b, _, n, _ = x.shape
    return x.transpose(1, 2).reshape(b, n, -1)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the wider of its dtype and fp32: bf16/fp16 go up to fp32, fp64 stays fp64
    (``.float()`` would drop a float64 module to fp32, or clash with its float64 buffers)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_heads(dim: int, heads: int) -> None:
    require(heads >= 1, "model.heads", heads, "a positive integer")
    if dim % heads:
        raise ConfigError(f"model.dim={dim} is not divisible by model.heads={heads}")


class MultiHeadAttention(nn.Module):
    """The frame every variant shares; subclasses define ``attend``."""

    def __init__(self, dim: int, heads: int, bias: bool = False) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.out(merge_heads(self.attend(q, k, v)).to(q.dtype))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def explicit_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """softmax(Q K^T * scale) V with the N x N matrix written out: the textbook formula."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v


def kernel_attention(
    phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, eps: float
) -> torch.Tensor:
    """phi(Q) (phi(K)^T V) / (phi(Q) . sum_n phi(K_n) + eps): attention whose weights are
    the dot products of a positive feature map, summed over keys first, so O(N) in tokens."""
    kv = phi_k.transpose(-2, -1) @ v  # (B, H, m, d)
    norm = phi_q @ phi_k.sum(dim=2, keepdim=True).transpose(-2, -1)  # (B, H, N, 1)
    return (phi_q @ kv) / (norm + eps)


class SoftmaxAttention(MultiHeadAttention):
    """Multi-head dot-product attention, softmax(QK^T / sqrt(d)) V. O(N^2) time and memory.

    ``impl="sdpa"`` calls torch's ``scaled_dot_product_attention``, which picks the flash,
    memory-efficient or math kernel itself; ``impl="explicit"`` builds the attention matrix.
    ``nanovit_quirks`` scales by 1/sqrt(dim) as nanovit did, instead of 1/sqrt(head_dim).
    Projections carry biases, as in nanovit.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        num_tokens: int,
        nanovit_quirks: bool = False,
        impl: str = "sdpa",
    ) -> None:
        super().__init__(dim, heads, bias=True)
        require(impl in ("sdpa", "explicit"), "model.attention.impl", impl, "sdpa or explicit")
        self.kernel = (
            F.scaled_dot_product_attention if impl == "sdpa" else explicit_softmax_attention
        )
        self.scale = dim**-0.5 if nanovit_quirks else None  # None: 1/sqrt(head_dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.kernel(q, k, v, scale=self.scale)


class LinearAttention(MultiHeadAttention):
    """Linear attention (Katharopoulos et al., 2020), non-causal, O(N d^2).

    ``kernel_attention`` with phi(x) = elu(x) + 1. The two sums over the sequence run in at
    least fp32 even under bf16 autocast: they add up to N = 1024 positive terms, which bf16's
    8-bit mantissa cannot hold accurately.
    """

    def __init__(
        self, dim: int, heads: int, num_tokens: int, nanovit_quirks: bool = False, eps: float = 1e-6
    ) -> None:
        super().__init__(dim, heads)
        require(eps >= 0, "model.attention.eps", eps, "a number >= 0")
        self.eps = eps

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=q.device.type, enabled=False):
            phi_q, phi_k = F.elu(at_least_fp32(q)) + 1, F.elu(at_least_fp32(k)) + 1
            return kernel_attention(phi_q, phi_k, at_least_fp32(v), self.eps)


class PerformerAttention(MultiHeadAttention):
    """Performer's FAVOR+ (Choromanski et al., 2021): softmax attention through positive
    orthogonal random features, O(N m d) for m features.

    exp(q.k / sqrt(d)) = E_w[phi(q) phi(k)] with phi(x) = exp(w.x - |x|^2/2) for Gaussian w
    (q, k each scaled by d^-1/4); drawing the m rows of w orthogonal lowers the variance. The
    features are a buffer, redrawn every ``redraw_interval`` training steps (None: fixed).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        num_tokens: int,
        nanovit_quirks: bool = False,
        features: int | None = None,
        redraw_interval: int | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, heads)
        positive_or_null = "a positive integer, or null"
        require(
            features is None or features >= 1,
            "model.attention.features",
            features,
            positive_or_null + " (d_head * ln d_head)",
        )
        require(
            redraw_interval is None or redraw_interval >= 1,
            "model.attention.redraw_interval",
            redraw_interval,
            positive_or_null,
        )
        require(eps >= 0, "model.attention.eps", eps, "a number >= 0")
        d = self.head_dim
        self.features = features if features is not None else max(1, round(d * math.log(d)))
        self.redraw_interval = redraw_interval
        self.eps = eps
        self.register_buffer("projection", self.draw_features())
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def draw_features(self, device: torch.device | None = None) -> torch.Tensor:
        """(m, d) Gaussian rows, orthogonal within each block of d, with chi(d) norms."""
        d, blocks = self.head_dim, []
        for _ in range(-(-self.features // d)):
            q, r = torch.linalg.qr(torch.randn(d, d, device=device))
            # Fixing QR's sign freedom makes q uniform (Haar); without it the rows' directions
            # are not uniform on the sphere and the softmax estimate is biased.
            blocks.append((q * torch.sign(torch.diagonal(r))).T)
        rows = torch.cat(blocks)[: self.features]
        return rows * torch.randn(self.features, d, device=device).norm(dim=1, keepdim=True)

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """phi(x), stabilised by subtracting a max before exp; the max cancels in the ratio:
        per row for queries, one over the whole sequence for keys."""
        x = x * self.head_dim**-0.25
        wx = x @ self.projection.T.to(x.dtype)  # (B, H, N, m); a bf16 module's features go up
        shift = wx.amax(dim=-1, keepdim=True) if is_query else wx.amax(dim=(-2, -1), keepdim=True)
        return torch.exp(wx - (x**2).sum(dim=-1, keepdim=True) / 2 - shift.detach()) + self.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.redraw_interval:
            if self.steps % self.redraw_interval == 0:
                self.projection.copy_(self.draw_features(self.projection.device))
            self.steps += 1
        return super().forward(x)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=q.device.type, enabled=False):
            phi_q = self.feature_map(at_least_fp32(q), is_query=True)
            phi_k = self.feature_map(at_least_fp32(k), is_query=False)
            return kernel_attention(phi_q, phi_k, at_least_fp32(v), eps=0.0)  # eps is inside phi


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse by Newton-Schulz iteration (Nystromformer's choice:
    matmuls only, so it runs on any device)."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    col = a.abs().sum(dim=-2).amax(dim=-1)  # largest column sum, per matrix
    row = a.abs().sum(dim=-1).amax(dim=-1)  # largest row sum
    z = a.transpose(-2, -1) / (col * row)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means(x: torch.Tensor, m: int) -> torch.Tensor:
    """(..., N, d) -> (..., m, d): means over m disjoint contiguous segments, 1 <= m <= N.

    Every token is in exactly one segment: the first N mod m hold ceil(N/m) tokens, the rest
    floor(N/m): disjoint, like the segments of Nystromformer's reference code (which pads N
    to a multiple of m), without padding. ``adaptive_avg_pool1d``'s windows overlap when m
    does not divide N, counting tokens twice, and make worse landmarks.
    """
    size, longer = divmod(x.shape[-2], m)
    split = longer * (size + 1)
    head = x[..., :split, :].unflatten(-2, (longer, size + 1)).mean(dim=-2)
    tail = x[..., split:, :].unflatten(-2, (m - longer, size)).mean(dim=-2)
    return torch.cat([head, tail], dim=-2)


class NystromAttention(MultiHeadAttention):
    """Nystromformer (Xiong et al., 2021): softmax attention from m landmarks, O(N m).

    softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V, where the landmarks Q~, K~ are
    means over m disjoint contiguous segments of the sequence (``segment_means``: of
    floor(N/m) and ceil(N/m) tokens when m does not divide N).
    ``pinv_iterations=0`` uses the exact pseudo-inverse instead of Newton-Schulz.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        num_tokens: int,
        nanovit_quirks: bool = False,
        landmarks: int = 32,
        pinv_iterations: int = 6,
    ) -> None:
        super().__init__(dim, heads)
        require(landmarks >= 1, "model.attention.landmarks", landmarks, "a positive integer")
        require(
            pinv_iterations >= 0,
            "model.attention.pinv_iterations",
            pinv_iterations,
            "an integer >= 0 (0: the exact pseudo-inverse)",
        )
        self.landmarks = landmarks
        self.pinv_iterations = pinv_iterations

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        m = min(self.landmarks, q.shape[-2])
        with torch.autocast(device_type=q.device.type, enabled=False):
            q = at_least_fp32(q) * q.shape[-1] ** -0.5
            k, v = at_least_fp32(k), at_least_fp32(v)
            q_land, k_land = segment_means(q, m), segment_means(k, m)
            kernel_1 = torch.softmax(q @ k_land.transpose(-2, -1), dim=-1)  # (N, m)
            kernel_2 = torch.softmax(q_land @ k_land.transpose(-2, -1), dim=-1)  # (m, m)
            kernel_3 = torch.softmax(q_land @ k.transpose(-2, -1), dim=-1)  # (m, N)
            if self.pinv_iterations:
                inverse = iterative_pinv(kernel_2, self.pinv_iterations)
            else:
                inverse = torch.linalg.pinv(kernel_2)
            return kernel_1 @ (inverse @ (kernel_3 @ v))


class LinformerAttention(MultiHeadAttention):
    """Linformer (Wang et al., 2020): softmax attention over keys and values projected along
    the sequence to k rows by learned (k, N) matrices, O(N k).

    The projections fix the token count at build time (``num_tokens``): an input of another
    length is an error, not a silent broadcast.
    """

    def __init__(
        self, dim: int, heads: int, num_tokens: int, nanovit_quirks: bool = False, k: int = 64
    ) -> None:
        super().__init__(dim, heads)
        require(k >= 1, "model.attention.k", k, "a positive integer")
        self.num_tokens = num_tokens
        self.proj_k = nn.Parameter(torch.randn(k, num_tokens) / math.sqrt(num_tokens))
        self.proj_v = nn.Parameter(torch.randn(k, num_tokens) / math.sqrt(num_tokens))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if k.shape[-2] != self.num_tokens:
            raise ConfigError(
                f"linformer was built for {self.num_tokens} tokens but got {k.shape[-2]}; "
                "its projections are sized by the model's token count"
            )
        return F.scaled_dot_product_attention(q, self.proj_k @ k, self.proj_v @ v)
