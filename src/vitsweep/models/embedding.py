"""Image-to-token embeddings. Each is one ``nn.Module`` mapping ``(B, C, H, W) -> (B, N, D)``.

Every class is built with the same three arguments, ``(in_channels, dim, image_size)`` (the
model passes them from the data config); anything after those is the embedding's own knob, set
from its YAML file in ``conf/embedding/``. Each exposes ``num_tokens``, which the model needs to
size its positional table and to tell attention how long the sequence is.
"""

import torch
import torch.nn.functional as F
from torch import nn

from vitsweep.errors import ConfigError, require


def token_grid(image_size: int, patch_size: int) -> int:
    """Tokens along one side of the image; the patch must tile the image exactly."""
    require(patch_size >= 1, "model.embedding.patch_size", patch_size, "a positive integer")
    if image_size % patch_size:
        raise ConfigError(
            f"image size {image_size} is not divisible by model.embedding.patch_size={patch_size}"
        )
    return image_size // patch_size


class PatchEmbedding(nn.Module):
    """Non-overlapping p x p patches, flattened channel-first (C*p*p), then one Linear."""

    def __init__(self, in_channels: int, dim: int, image_size: int, patch_size: int = 2) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_tokens = token_grid(image_size, patch_size) ** 2
        self.proj = nn.Linear(in_channels * patch_size**2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        patches = F.unfold(x, kernel_size=p, stride=p)  # (B, C*p*p, N), channel-first
        return self.proj(patches.transpose(1, 2))


class ConvEmbedding(nn.Module):
    """nanovit's CNN stem: 3x3 convs with ReLU, one token per pixel.

    ``patch_size`` is the stride of the last conv: 1 (as in nanovit) keeps a token per pixel,
    p > 1 leaves one token per p x p patch for the same parameters.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        image_size: int,
        channels: tuple[int, ...] = (32, 64),
        patch_size: int = 1,
    ) -> None:
        super().__init__()
        self.num_tokens = token_grid(image_size, patch_size) ** 2
        require(
            all(c >= 1 for c in channels),
            "model.embedding.channels",
            channels,
            "a list of positive integers",
        )
        widths = (in_channels, *channels, dim)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            stride = patch_size if i == len(widths) - 2 else 1
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
        self.stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2).transpose(1, 2)


class ConvPatchEmbedding(nn.Module):
    """A small conv stem, then a strided p x p patchify (a CCT-style tokenizer).

    The stem sees every pixel, as the CNN stem does, but the patchify leaves (S/p)^2 tokens
    instead of S^2, so attention runs over fewer tokens.
    """

    def __init__(
        self, in_channels: int, dim: int, image_size: int, channels: int = 64, patch_size: int = 2
    ) -> None:
        super().__init__()
        self.num_tokens = token_grid(image_size, patch_size) ** 2
        require(channels >= 1, "model.embedding.channels", channels, "a positive integer")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, dim, patch_size, stride=patch_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2).transpose(1, 2)
