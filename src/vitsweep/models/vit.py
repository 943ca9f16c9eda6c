"""The Vision Transformer that every preset and every mix of parts builds.

Embedding and attention arrive as factories (``functools.partial`` objects that Hydra makes
from the ``embedding`` and ``attention`` config groups), so this file never names a variant.
"""

from collections.abc import Callable

import torch
from torch import nn

from vitsweep.errors import ConfigError
from vitsweep.models.attention import check_heads


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x)).

    ``norm_residual`` reproduces the seed's block, which normalises the residual stream itself
    before the feed-forward (x = norm2(x); x = x + ffn(x)).
    """

    def __init__(
        self, dim: int, attention: nn.Module, mlp_dim: int, dropout: float, norm_residual: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_dim, dropout)
        self.norm_residual = norm_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        if self.norm_residual:
            x = self.norm2(x)
            return x + self.ffn(x)
        return x + self.ffn(self.norm2(x))


class VisionTransformer(nn.Module):
    """Tokens from ``embedding``, a learned cls token and positions, ``depth`` blocks, a head.

    ``seed_quirks=True`` rebuilds the seed exactly as it was written: softmax scaled by
    1/sqrt(dim) (set in conf/attention/softmax.yaml), the residual stream normalised in each
    block, and cls/positions initialised with std 1 instead of 0.02. None of them changes
    the parameter count.
    """

    def __init__(
        self,
        embedding: Callable[..., nn.Module],
        attention: Callable[..., nn.Module],
        image_size: int,
        in_channels: int,
        num_classes: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 8,
        mlp_dim: int = 512,
        dropout: float = 0.1,
        seed_quirks: bool = False,
    ) -> None:
        super().__init__()
        check_heads(dim, heads)
        if depth < 1:
            raise ConfigError(f"model.depth must be at least 1, got {depth}")
        self.embed = embedding(in_channels=in_channels, dim=dim, image_size=image_size)
        self.num_tokens = self.embed.num_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, self.num_tokens + 1, dim))
        init_std = 1.0 if seed_quirks else 0.02
        nn.init.normal_(self.cls_token, std=init_std)
        nn.init.normal_(self.pos, std=init_std)
        self.blocks = nn.Sequential(
            *(
                Block(dim, attention(dim=dim, heads=heads), mlp_dim, dropout, seed_quirks)
                for _ in range(depth)
            )
        )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.blocks(x)
        return self.head(x[:, 0])
