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
    assert torch.allclose(embed(image)[0, 0], embed.proj(first_patch), atol=1e-5)


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


def _tiny(dim: int = 32, **kwargs) -> VisionTransformer:
    embedding = partial(PatchEmbedding, patch_size=8)
    return VisionTransformer(embedding, SoftmaxAttention, 32, 3, 10, dim=dim, **kwargs)


def test_mean_pooling_drops_the_cls_token():
    with_cls, mean = _tiny(), _tiny(pool="mean")
    assert mean.cls_token is None
    assert count_parameters(with_cls) - count_parameters(mean) == 32 + 32  # cls + its position
    assert mean(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_sincos_and_no_positions_learn_no_position_table(pool):
    learned = count_parameters(_tiny(pool=pool))
    tokens = 16 + (pool == "cls")
    for pos in ("sincos", "none"):
        model = _tiny(pool=pool, pos=pos)
        assert count_parameters(model) == learned - tokens * 32
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_sincos_positions_are_distinct_and_bounded():
    from vitsweep.models.vit import sincos_positions

    table = sincos_positions(64, 32)
    assert table.shape == (64, 32) and table.abs().max() <= 1
    assert torch.cdist(table, table).add(torch.eye(64)).min() > 0.1  # no two tokens alike


def test_bad_pool_pos_and_grid_are_config_errors():
    with pytest.raises(ConfigError, match="model.pool"):
        _tiny(pool="max")
    with pytest.raises(ConfigError, match="model.pos"):
        _tiny(pos="rope")
    with pytest.raises(ConfigError, match="dim divisible by 4"):
        _tiny(pos="sincos", heads=2, dim=30)


def test_linformer_is_told_the_token_count_with_or_without_cls():
    from vitsweep.models import LinformerAttention

    for pool, seq_len in (("cls", 17), ("mean", 16)):
        model = VisionTransformer(
            partial(PatchEmbedding, patch_size=8), partial(LinformerAttention, k=4), 32, 3, 10,
            dim=32, pool=pool,
        )  # fmt: skip
        assert model.blocks[0].attn.seq_len == seq_len
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_conv_patch_embedding_tokenizes_patches():
    from vitsweep.models import ConvPatchEmbedding

    embed = ConvPatchEmbedding(in_channels=3, dim=32, image_size=32, patch_size=4)
    assert embed.num_tokens == 64
    assert embed(torch.randn(2, 3, 32, 32)).shape == (2, 64, 32)
