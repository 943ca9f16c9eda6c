"""Model parts: attention mechanisms, image embeddings and the Vision Transformer."""

from vitsweep.models.attention import LinearAttention, SoftmaxAttention
from vitsweep.models.embedding import ConvEmbedding, PatchEmbedding
from vitsweep.models.vit import VisionTransformer

__all__ = [
    "ConvEmbedding",
    "LinearAttention",
    "PatchEmbedding",
    "SoftmaxAttention",
    "VisionTransformer",
]
