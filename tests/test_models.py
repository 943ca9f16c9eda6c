from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from vitsweep.errors import ConfigError
from vitsweep.measure import count_parameters, flops_per_image
from vitsweep.models import (
    ConvEmbedding,
    LinearAttention,
    PatchEmbedding,
    SoftmaxAttention,
    VisionTransformer,
)

SEED_PARAMS = {"vit": 829_322, "vitl": 924_426, "vitx": 1_017_162}
SEED_TOKENS = {"vit": 256, "vitl": 1024, "vitx": 1024}


@pytest.mark.parametrize("preset", SEED_PARAMS)
@pytest.mark.parametrize("quirks", [False, True])
def test_presets_match_the_seed_parameter_counts(make_config, preset, quirks):
    cfg = make_config([f"model={preset}", "data=cifar10", f"model.seed_quirks={quirks}"])
    model = instantiate(cfg.model)
    assert count_parameters(model) == SEED_PARAMS[preset]
    assert model.num_tokens == SEED_TOKENS[preset]


def test_model_sizes_come_from_the_data_config(make_config):
    cfg = make_config(["model=vit", "data=fashion_mnist"])  # 28x28, one channel
    model = instantiate(cfg.model)
    assert model.num_tokens == 14 * 14
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_flops_count_the_attention_kernel():
    # vit: 4 blocks at 257 tokens; SDPA's two matmuls are 4*N^2*D FLOPs per block.
    model = VisionTransformer(partial(PatchEmbedding, patch_size=2), SoftmaxAttention, 32, 3, 10)
    with_sdpa = flops_per_image(model, (3, 32, 32))
    assert with_sdpa - 4 * (4 * 257**2 * 128) == pytest.approx(405_015_040)


@pytest.mark.parametrize("attention", [SoftmaxAttention, LinearAttention])
def test_attention_maps_tokens_to_tokens(attention):
    x = torch.randn(2, 17, 64)
    assert attention(64, 8)(x).shape == x.shape


@pytest.mark.parametrize(
    ("embedding", "tokens"),
    [(partial(PatchEmbedding, patch_size=4), 64), (ConvEmbedding, 1024)],
)
def test_embedding_maps_images_to_tokens(embedding, tokens):
    module = embedding(in_channels=3, dim=32, image_size=32)
    assert module.num_tokens == tokens
    assert module(torch.randn(2, 3, 32, 32)).shape == (2, tokens, 32)


def test_patches_are_flattened_channel_first():
    embed = PatchEmbedding(in_channels=2, dim=8, image_size=4, patch_size=2)
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    first_patch = torch.cat([image[0, c, :2, :2].flatten() for c in range(2)])
    assert torch.allclose(embed(image)[0, 0], embed.proj(first_patch))


def test_strided_conv_stem_keeps_a_token_per_patch():
    stem = ConvEmbedding(in_channels=3, dim=32, image_size=32, patch_size=4)
    assert stem(torch.randn(1, 3, 32, 32)).shape == (1, 64, 32)


def test_bad_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="not divisible by model.heads"):
        VisionTransformer(PatchEmbedding, SoftmaxAttention, 32, 3, 10, dim=100, heads=8)
    with pytest.raises(ConfigError, match="not divisible by model.embedding.patch_size"):
        PatchEmbedding(in_channels=3, dim=32, image_size=32, patch_size=3)


def test_seed_quirks_change_the_block_not_the_size():
    build = partial(VisionTransformer, partial(PatchEmbedding, patch_size=4), SoftmaxAttention)
    torch.manual_seed(0)
    plain = build(32, 3, 10)
    torch.manual_seed(0)
    quirky = build(32, 3, 10, seed_quirks=True)
    assert count_parameters(plain) == count_parameters(quirky)
    assert quirky.pos.std() > 0.5 > plain.pos.std()
    quirky.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(plain.eval()(x), quirky.eval()(x))
