from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from vitsweep.errors import ConfigError
from vitsweep.measure import count_parameters, flops_per_image
from vitsweep.models import (
    ConvEmbedding,
    ConvPatchEmbedding,
    LinformerAttention,
    PatchEmbedding,
    SoftmaxAttention,
    VisionTransformer,
)
from vitsweep.settings import DataSettings

NANOVIT_PARAMS = {"vit": 829_322, "vitl": 924_426, "vitx": 1_017_162}
NANOVIT_TOKENS = {"vit": 256, "vitl": 1024, "vitx": 1024}


@pytest.mark.parametrize("preset", NANOVIT_PARAMS)
@pytest.mark.parametrize("quirks", [False, True])
def test_presets_match_nanovits_parameter_counts(make_config, preset, quirks):
    cfg = make_config([f"model={preset}", "data=cifar10", f"model.nanovit_quirks={quirks}"])
    model = instantiate(cfg.model, image_size=32, in_channels=3, num_classes=10)
    assert count_parameters(model) == NANOVIT_PARAMS[preset]
    assert model.num_tokens == NANOVIT_TOKENS[preset]


def test_model_sizes_come_from_the_data_config(make_config):
    cfg = make_config(["model=vit", "data=fashion_mnist"])  # 28x28, one channel
    model = instantiate(cfg.model, **DataSettings(**cfg.data).model_sizes())
    assert model.num_tokens == 14 * 14
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_flops_count_the_attention_kernel():
    # vit: 4 blocks at 257 tokens; SDPA's two matmuls are 4*N^2*D FLOPs per block.
    model = VisionTransformer(partial(PatchEmbedding, patch_size=2), SoftmaxAttention, 32, 3, 10)
    with_sdpa = flops_per_image(model, (3, 32, 32))
    assert with_sdpa - 4 * (4 * 257**2 * 128) == pytest.approx(405_015_040)


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


class NanoViT(nn.Module):
    """nanovit's VIT restated from its write-up, independently of vitsweep's code: separate
    q/k/v/o projections with bias, softmax scaled by 1/sqrt(dim), the block normalising the
    residual stream itself, a ReLU FFN, cls token and positions, LayerNorm + Linear head."""

    def __init__(self, dim=32, heads=4, depth=2, patch=4, image=16, classes=10):
        super().__init__()
        self.dim, self.heads, self.patch = dim, heads, patch
        self.proj = nn.Linear(3 * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm1": nn.LayerNorm(dim),
                    "norm2": nn.LayerNorm(dim),
                    "q": nn.Linear(dim, dim),
                    "k": nn.Linear(dim, dim),
                    "v": nn.Linear(dim, dim),
                    "o": nn.Linear(dim, dim),
                    "ffn": nn.Sequential(
                        nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim)
                    ),
                }
            )
            for _ in range(depth)
        )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))

    def attention(self, layer, x):
        b, n, d = x.shape
        q, k, v = (layer[name](x).view(b, n, self.heads, -1).transpose(1, 2) for name in "qkv")
        weights = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)  # 1/sqrt(dim)
        return layer["o"]((weights @ v).transpose(1, 2).reshape(b, n, d))

    def forward(self, images):
        p = self.patch
        patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # channel-first
        x = torch.cat([self.cls.expand(len(images), -1, -1), self.proj(patches)], 1) + self.pos
        for layer in self.layers:
            x = x + self.attention(layer, layer["norm1"](x))
            x = layer["norm2"](x)  # nanovit normalises the residual stream itself
            x = x + layer["ffn"](x)
        return self.head(x[:, 0])


def _load_into_nanovit(ours: VisionTransformer, nanovit: NanoViT) -> None:
    with torch.no_grad():
        nanovit.proj.load_state_dict(ours.embed.proj.state_dict())
        nanovit.cls.copy_(ours.cls_token)
        nanovit.pos.copy_(ours.pos)
        for block, layer in zip(ours.blocks, nanovit.layers):
            layer["norm1"].load_state_dict(block.norm1.state_dict())
            layer["norm2"].load_state_dict(block.norm2.state_dict())
            for name, w, b in zip(
                "qkv", block.attn.qkv.weight.chunk(3), block.attn.qkv.bias.chunk(3)
            ):
                layer[name].weight.copy_(w)
                layer[name].bias.copy_(b)
            layer["o"].load_state_dict(block.attn.out.state_dict())
            layer["ffn"][0].load_state_dict(block.ffn[0].state_dict())
            layer["ffn"][2].load_state_dict(block.ffn[3].state_dict())
        nanovit.head.load_state_dict(ours.head.state_dict())


def test_nanovit_quirks_built_in_python_are_nanovits_model():
    build = partial(
        VisionTransformer,
        partial(PatchEmbedding, patch_size=4),
        SoftmaxAttention,
        16,
        3,
        10,
        dim=32,
        heads=4,
        depth=2,
        mlp_dim=128,
    )
    torch.manual_seed(0)
    quirky, plain = build(nanovit_quirks=True), build()
    assert quirky.pos.std() > 0.5 > plain.pos.std()  # nanovit initialised with std 1
    nanovit = NanoViT()
    assert count_parameters(quirky) == count_parameters(nanovit) == count_parameters(plain)
    _load_into_nanovit(quirky, nanovit)
    images = torch.randn(4, 3, 16, 16)
    expected = nanovit.eval()(images)
    assert torch.allclose(quirky.eval()(images), expected, atol=1e-5)
    plain.load_state_dict(quirky.state_dict())  # same weights, corrected formulas
    assert not torch.allclose(plain.eval()(images), expected, atol=1e-3)


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
    for pool, seq_len in (("cls", 17), ("mean", 16)):
        model = VisionTransformer(
            partial(PatchEmbedding, patch_size=8),
            partial(LinformerAttention, k=4),
            32,
            3,
            10,
            dim=32,
            pool=pool,
        )
        assert model.blocks[0].attn.num_tokens == seq_len
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_conv_patch_embedding_tokenizes_patches():
    embed = ConvPatchEmbedding(in_channels=3, dim=32, image_size=32, patch_size=4)
    assert embed.num_tokens == 64
    assert embed(torch.randn(2, 3, 32, 32)).shape == (2, 64, 32)


def test_peak_memory_counts_tensors_allocated_during_the_pass_and_not_before():
    from vitsweep.measure import held_tensor_mb, peak_rise_mb

    cpu = torch.device("cpu")
    kept = torch.zeros(8 * 2**20, dtype=torch.uint8)  # 8 MB allocated before: not counted

    def pass_():
        a = torch.ones(16 * 2**20, dtype=torch.uint8)  # 16 MB at once, then 4 more on top
        b = torch.ones(4 * 2**20, dtype=torch.uint8)
        del a, b

    assert 20 <= peak_rise_mb(cpu, pass_) < 21
    module = torch.nn.Linear(1024, 256)  # (1024*256 + 256) fp32 parameters
    assert held_tensor_mb(module, kept) == pytest.approx((1024 * 256 + 256) * 4 / 2**20 + 8)


def test_writing_the_attention_matrix_out_costs_quadratic_memory():
    from vitsweep.measure import peak_rise_mb

    cpu, x = torch.device("cpu"), torch.randn(1, 1024, 64)
    explicit = SoftmaxAttention(64, 4, 1024, impl="explicit")
    matrix_mb = 4 * 1024 * 1024 * 4 / 2**20  # heads x N x N fp32 = 16 MB
    with torch.no_grad():
        assert peak_rise_mb(cpu, lambda: explicit(x)) >= matrix_mb


def test_cpu_dropout_keeps_each_element_with_probability_1_minus_p_and_rescales():
    from vitsweep.models.dropout import Dropout

    torch.manual_seed(0)
    drop, x = Dropout(0.1), torch.ones(1000, 1001)  # an odd count: the last 64-bit draw is cut
    out = drop(x)
    kept = out != 0
    assert torch.allclose(out[kept], torch.tensor(1 / 0.9))
    # Every one of the four 16-bit lanes cut from a draw is unbiased (a sign bit stuck at 0
    # in any lane would keep that lane's elements 100% or 80% of the time).
    for lane in range(4):
        assert kept.flatten()[lane::4].float().mean().item() == pytest.approx(0.9, abs=0.003)
    x.requires_grad_(True)
    torch.manual_seed(1)
    drop(x).sum().backward()
    torch.manual_seed(1)
    assert torch.equal(x.grad, drop(x.detach()))  # the gradient is the scaled mask
    assert torch.equal(drop.eval()(x), x)  # evaluation: the identity
