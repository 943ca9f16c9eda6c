import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import CONF, TINY

GROUPS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("attention", "embedding", "model", "optim", "device", "data", "logger")
}


def test_the_groups_offer_what_the_readme_promises():
    assert GROUPS["attention"] == ["linear", "linformer", "nystrom", "performer", "softmax"]
    assert GROUPS["embedding"] == ["cnn", "conv_patch", "patch"]
    assert GROUPS["model"] == ["vit", "vitl", "vitx"]
    assert GROUPS["optim"] == ["adamw", "sgd"]
    assert GROUPS["device"] == ["auto", "cpu", "cuda", "mps"]
    assert GROUPS["data"] == ["cifar10", "digits", "fashion_mnist"]
    assert GROUPS["logger"] == ["none", "wandb"]


@pytest.mark.parametrize(
    "override", [f"{group}={option}" for group, options in GROUPS.items() for option in options]
)
def test_every_option_composes_into_a_buildable_model(make_config, override):
    cfg = make_config([override])
    model = instantiate(cfg.model)
    size = cfg.data.image_size
    images = torch.zeros(1, cfg.data.channels, size, size)
    assert model(images).shape == (1, cfg.data.num_classes)
    optimizer = instantiate(cfg.optim)(model.parameters())
    assert optimizer.param_groups[0]["lr"] == cfg.optim.lr


def test_defaults(make_config):
    cfg = make_config([])
    assert (cfg.device.name, cfg.data.name, cfg.trainer.epochs) == ("auto", "cifar10", 40)
    assert cfg.model.attention._target_.endswith("SoftmaxAttention")
    assert cfg.model.embedding.patch_size == 2


def test_mission_command_line_composes_as_typed(make_config):
    cfg = make_config(["model=vitx", "device=cuda"])
    assert cfg.device.name == "cuda"
    assert cfg.model.attention._target_.endswith("LinearAttention")
    assert cfg.model.embedding._target_.endswith("ConvEmbedding")


def test_the_command_line_beats_the_preset(make_config):
    cfg = make_config(["model=vitx", "attention=softmax"])
    assert cfg.model.attention._target_.endswith("SoftmaxAttention")
    assert cfg.model.embedding._target_.endswith("ConvEmbedding")


def test_preset_patch_size_does_not_leak_into_another_embedding(make_config):
    cfg = make_config(["model=vitl", "embedding=cnn"])
    assert instantiate(cfg.model).num_tokens == 1024


def test_field_overrides_reach_the_parts(make_config):
    cfg = make_config(
        ["attention=linear", "embedding=cnn", "model.dim=64", "optim.lr=3e-4", "trainer.epochs=5"]
    )
    model = instantiate(cfg.model)
    assert model.cls_token.shape[-1] == 64
    assert cfg.optim.lr == 3e-4 and cfg.trainer.epochs == 5


def test_seed_quirks_switch_reaches_softmax_scale(make_config):
    assert not make_config([]).model.attention.full_width_scale
    assert make_config(["model.seed_quirks=true"]).model.attention.full_width_scale


def test_grid_sweep_composes_every_job(cli, tmp_path):
    result = cli("-m", "attention=softmax,linear", "embedding=patch,cnn", "trainer.epochs=0", *TINY)
    assert result.returncode == 0, result.stderr
    summaries = sorted(tmp_path.glob("multirun/**/summary.json"))
    assert len(summaries) == 4
    assert all('"status": "sized"' in s.read_text() for s in summaries)


def test_attention_zoo_times_embeddings_builds_all_fifteen(cli, tmp_path):
    result = cli(
        "-m",
        "attention=softmax,linear,performer,nystrom,linformer",
        "embedding=patch,cnn,conv_patch",
        "trainer.epochs=0",
        "data=digits",
        "logger=none",
    )
    assert result.returncode == 0, result.stderr
    summaries = sorted(tmp_path.glob("multirun/**/summary.json"))
    assert len(summaries) == 15
    assert all('"status": "sized"' in s.read_text() for s in summaries)
