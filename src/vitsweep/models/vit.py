"""The Vision Transformer that every preset and every mix of parts builds.

Embedding and attention arrive as factories (``functools.partial`` objects that Hydra makes
from the ``embedding`` and ``attention`` config groups), so this file never names a variant: it
calls every embedding with ``(in_channels, dim, image_size)`` and every attention with
``(dim, heads, num_tokens, nanovit_quirks)``, and never looks at which one it got.
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from vitsweep.errors import ConfigError, require_each
from vitsweep.models.attention import check_heads
from vitsweep.models.dropout import Dropout

# The contract: what every embedding and every attention is built with (their first arguments).
EMBEDDING_ARGS = ("in_channels", "dim", "image_size")
ATTENTION_ARGS = ("dim", "heads", "num_tokens", "nanovit_quirks")


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            Dropout(dropout),
            nn.Linear(hidden, dim),
            Dropout(dropout),
        )


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x)).

    ``norm_residual`` reproduces nanovit's block, which normalises the residual stream itself
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


def sincos_positions(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions for a square grid of tokens, (N, dim): a quarter of
    the channels each for sin(y), cos(y), sin(x), cos(x) at geometric frequencies."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or dim % 4:
        raise ConfigError(
            f"model.pos=sincos needs a square token grid and dim divisible by 4 "
            f"(got {num_tokens} tokens, dim {dim})"
        )
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))
    angles = [axis.flatten()[:, None].float() * freq for axis in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


def _check_args(sizes: dict[str, int], heads: int, dropout: float, pool: str, pos: str) -> None:
    """One ConfigError for the first bad argument: the sizes (``dim`` among them), the heads,
    then the choices."""
    require_each("model", [(field, v, v >= 1, "a positive integer") for field, v in sizes.items()])
    check_heads(sizes["dim"], heads)
    require_each("model", [
        ("dropout", dropout, 0 <= dropout < 1, "a probability in [0, 1)"),
        ("pool", pool, pool in ("cls", "mean"), "cls or mean"),
        ("pos", pos, pos in ("learned", "sincos", "none"), "learned, sincos or none"),
    ])  # fmt: skip


class VisionTransformer(nn.Module):
    """Tokens from ``embedding``, positions, ``depth`` blocks, a head on the pooled tokens.

    ``pool``: ``cls`` prepends a learned cls token and classifies from it; ``mean`` has no
    cls token and averages the tokens. ``pos``: ``learned`` (a table, one row per token),
    ``sincos`` (fixed 2-D sine-cosine; the cls token gets none), or ``none``.

    ``nanovit_quirks=True`` rebuilds nanovit exactly as it was written: softmax scaled by
    1/sqrt(dim) (the attention is told), the residual stream normalised in each block, and
    cls/positions initialised with std 1 instead of 0.02. None of them changes the parameter
    count.
    """

    RENAMED = {"seed_quirks": "nanovit_quirks"}  # old key: new key (vitsweep.fields says so)

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
        pool: str = "cls",
        pos: str = "learned",
        nanovit_quirks: bool = False,
    ) -> None:
        super().__init__()
        sizes = {
            "image_size": image_size,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "dim": dim,
            "depth": depth,
            "mlp_dim": mlp_dim,
        }
        _check_args(sizes, heads, dropout, pool, pos)
        self.embed = embedding(in_channels=in_channels, dim=dim, image_size=image_size)
        self.num_tokens = self.embed.num_tokens
        self.pool = pool
        init_std = 1.0 if nanovit_quirks else 0.02
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * init_std) if pool == "cls" else None
        seq_len = self.num_tokens + (pool == "cls")
        self._init_positions(pos, seq_len, dim, init_std)
        parts = dict(dim=dim, heads=heads, num_tokens=seq_len, nanovit_quirks=nanovit_quirks)
        self.blocks = nn.Sequential(
            *(
                Block(dim, attention(**parts), mlp_dim, dropout, nanovit_quirks)
                for _ in range(depth)
            )
        )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def _init_positions(self, pos: str, seq_len: int, dim: int, init_std: float) -> None:
        """``self.pos``: a learned table (one row per token), fixed 2-D sine-cosine, or None."""
        if pos == "learned":
            self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * init_std)
        elif pos == "sincos":
            table = sincos_positions(self.num_tokens, dim)
            if self.pool == "cls":  # the cls token has no place in the grid
                table = torch.cat([torch.zeros(1, dim), table])
            self.register_buffer("pos", table.unsqueeze(0), persistent=False)
        else:
            self.pos = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos is not None:
            x = x + self.pos
        x = self.blocks(x)
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))
