"""Attention mechanisms. Each is one ``nn.Module`` mapping ``(B, N, D) -> (B, N, D)``.

Every class takes ``dim`` and ``heads`` first (the model passes them); anything after that is
the mechanism's own knob, set from its YAML file in ``conf/attention/``.
"""

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


class SoftmaxAttention(nn.Module):
    """Multi-head dot-product attention, softmax(QK^T / sqrt(d)) V, through torch's SDPA.

    ``scaled_dot_product_attention`` picks the flash, memory-efficient or math kernel itself.
    ``full_width_scale`` reproduces the seed's 1/sqrt(dim) scale instead of 1/sqrt(head_dim).
    """

    def __init__(self, dim: int, heads: int, full_width_scale: bool = False) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.scale = dim**-0.5 if full_width_scale else None  # None: SDPA's 1/sqrt(head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, scale=self.scale)))


class LinearAttention(nn.Module):
    """Linear attention (Katharopoulos et al., 2020), non-causal, O(N d^2).

    With phi(x) = elu(x) + 1:  out = phi(Q) (phi(K)^T V) / (phi(Q) . sum_n phi(K_n) + eps).
    The two reductions over the sequence run in fp32 even under bf16 autocast: they sum up to
    N = 1024 positive terms, which bf16's 8-bit mantissa cannot hold accurately.
    """

    def __init__(self, dim: int, heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = F.elu(q.float()) + 1, F.elu(k.float()) + 1, v.float()
            kv = k.transpose(-2, -1) @ v  # (B, H, d, d): phi(K)^T V
            norm = q @ k.sum(dim=2, keepdim=True).transpose(-2, -1)  # (B, H, N, 1)
            y = (q @ kv) / (norm + self.eps)
        return self.out(merge_heads(y).to(x.dtype))
