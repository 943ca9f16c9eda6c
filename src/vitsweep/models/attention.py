"""Attention mechanisms. Each is one ``nn.Module`` mapping ``(B, N, D) -> (B, N, D)``.

Every class takes ``dim`` and ``heads`` first (the model passes them); anything after that is
the mechanism's own knob, set from its YAML file in ``conf/attention/``. They share one frame,
``MultiHeadAttention``: project to q, k, v, split heads, ``attend``, merge, project out. A
variant is its ``attend(q, k, v)`` on (B, H, N, d) tensors, which is what the tests check
against each mechanism's definition.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.errors import ConfigError


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*d) -> (B, H, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H*d)."""
    b, _, n, _ = x.shape
    return x.transpose(1, 2).reshape(b, n, -1)


def check_heads(dim: int, heads: int) -> None:
    if heads < 1 or dim % heads:
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


class SoftmaxAttention(MultiHeadAttention):
    """Multi-head dot-product attention, softmax(QK^T / sqrt(d)) V. O(N^2) time and memory.

    ``impl="sdpa"`` calls torch's ``scaled_dot_product_attention``, which picks the flash,
    memory-efficient or math kernel itself; ``impl="explicit"`` builds the attention matrix.
    ``full_width_scale`` reproduces the seed's 1/sqrt(dim) scale instead of 1/sqrt(head_dim).
    Projections carry biases, as in the seed.
    """

    def __init__(
        self, dim: int, heads: int, impl: str = "sdpa", full_width_scale: bool = False
    ) -> None:
        super().__init__(dim, heads, bias=True)
        if impl not in ("sdpa", "explicit"):
            raise ConfigError(f"model.attention.impl must be sdpa or explicit, got '{impl}'")
        self.kernel = (
            F.scaled_dot_product_attention if impl == "sdpa" else explicit_softmax_attention
        )
        self.scale = dim**-0.5 if full_width_scale else None  # None: 1/sqrt(head_dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.kernel(q, k, v, scale=self.scale)


class LinearAttention(MultiHeadAttention):
    """Linear attention (Katharopoulos et al., 2020), non-causal, O(N d^2).

    With phi(x) = elu(x) + 1:  out = phi(Q) (phi(K)^T V) / (phi(Q) . sum_n phi(K_n) + eps).
    The two reductions over the sequence run in fp32 even under bf16 autocast: they sum up to
    N = 1024 positive terms, which bf16's 8-bit mantissa cannot hold accurately.
    """

    def __init__(self, dim: int, heads: int, eps: float = 1e-6) -> None:
        super().__init__(dim, heads)
        self.eps = eps

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = F.elu(q.float()) + 1, F.elu(k.float()) + 1, v.float()
            kv = k.transpose(-2, -1) @ v  # (B, H, d, d): phi(K)^T V
            norm = q @ k.sum(dim=2, keepdim=True).transpose(-2, -1)  # (B, H, N, 1)
            return (q @ kv) / (norm + self.eps)


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
        features: int | None = None,
        redraw_interval: int | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, heads)
        d = self.head_dim
        self.features = features or max(1, round(d * math.log(d)))
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
        wx = x @ self.projection.T  # (B, H, N, m)
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
            q = self.feature_map(q.float(), is_query=True)
            k = self.feature_map(k.float(), is_query=False)
            kv = k.transpose(-2, -1) @ v.float()  # (B, H, m, d)
            norm = q @ k.sum(dim=2, keepdim=True).transpose(-2, -1)  # (B, H, N, 1)
            return (q @ kv) / norm


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
    """(B, H, N, d) -> (B, H, m, d): means over m contiguous segments; any N, divisible or not."""
    b, h, n, d = x.shape
    pooled = F.adaptive_avg_pool1d(x.reshape(b * h, n, d).transpose(1, 2), m)
    return pooled.transpose(1, 2).reshape(b, h, m, d)


class NystromAttention(MultiHeadAttention):
    """Nystromformer (Xiong et al., 2021): softmax attention from m landmarks, O(N m).

    softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V, where the landmarks Q~, K~ are
    means over m segments of the sequence (uneven segments when m does not divide N).
    ``pinv_iterations=0`` uses the exact pseudo-inverse instead of Newton-Schulz.
    """

    def __init__(self, dim: int, heads: int, landmarks: int = 32, pinv_iterations: int = 6) -> None:
        super().__init__(dim, heads)
        if landmarks < 1:
            raise ConfigError(f"model.attention.landmarks must be positive, got {landmarks}")
        self.landmarks = landmarks
        self.pinv_iterations = pinv_iterations

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        m = min(self.landmarks, q.shape[-2])
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = q.float() * q.shape[-1] ** -0.5, k.float(), v.float()
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

    The projections fix the token count at build time: the model passes ``seq_len``, and an
    input of another length is an error, not a silent broadcast.
    """

    def __init__(self, dim: int, heads: int, seq_len: int, k: int = 64) -> None:
        super().__init__(dim, heads)
        if k < 1:
            raise ConfigError(f"model.attention.k must be positive, got {k}")
        self.seq_len = seq_len
        self.proj_k = nn.Parameter(torch.randn(k, seq_len) / math.sqrt(seq_len))
        self.proj_v = nn.Parameter(torch.randn(k, seq_len) / math.sqrt(seq_len))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if k.shape[-2] != self.seq_len:
            raise ConfigError(
                f"linformer was built for {self.seq_len} tokens but got {k.shape[-2]}; "
                "its projections are sized by the model's token count"
            )
        return F.scaled_dot_product_attention(q, self.proj_k @ k, self.proj_v @ v)
