"""Model parts: attention mechanisms, image embeddings and the Vision Transformer."""

from vitsweep.models.attention import (
    LinearAttention,
    LinformerAttention,
    NystromAttention,
    PerformerAttention,
    SoftmaxAttention,
)
from vitsweep.models.embedding import ConvEmbedding, ConvPatchEmbedding, PatchEmbedding
from vitsweep.models.vit import VisionTransformer

__all__ = [
    "ConvEmbedding",
    "ConvPatchEmbedding",
    "LinearAttention",
    "LinformerAttention",
    "NystromAttention",
    "PatchEmbedding",
    "PerformerAttention",
    "SoftmaxAttention",
    "VisionTransformer",
]
