"""Dropout whose CPU mask costs a quarter of torch's.

torch's CPU dropout draws one random number per element (``bernoulli_``); in a small ViT that
costs more than the matrix multiply beside it (a fifth of a training step on a 2-core CPU).
Here 16 random bits per element are cut from 64-bit draws, four elements per draw, and compared
with p·2^16: the same dropout (each element kept with probability 1 - p, p rounded to 1/65536,
kept ones scaled by 1/(1 - p)) from a quarter of the draws. On other devices torch's own fused
kernel is already fast and is used unchanged.
"""

import torch
from torch import nn


class Dropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p in (0, 1) or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), dtype=torch.int64)
        bits = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
        keep = bits >= round(self.p * 65536) - 32768
        # The mask already carries the 1/(1-p) scale: backward is one multiply, as in torch's.
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))
