"""Config composition: every option of every group is discovered from conf/, composes, and
reaches its own part; presets pick parts and sizes; the README lists every option (each has
its row in docs/: tests/test_docs.py)."""

import re

import pytest
import torch
import yaml
from hydra.utils import get_object

from tests.helpers import CONF, ROOT, size_only_sweep
from vitsweep.config import GROUPS, options
from vitsweep.device import resolve_device
from vitsweep.errors import ConfigError
from vitsweep.job import build

pytestmark = pytest.mark.usefixtures("no_plots")  # figures: tests of their own

OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


def _defaults() -> dict[str, str]:
    listed = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return {k: v for entry in listed if isinstance(entry, dict) for k, v in entry.items()}


def test_every_group_offers_options_and_defaults_to_one_of_them():
    defaults = _defaults()
    for group in GROUPS:
        assert options(group), group
        assert defaults[group] in options(group)


def _built(make_config, overrides):
    cfg = make_config(overrides)
    from omegaconf import OmegaConf

    return cfg, build(OmegaConf.to_container(cfg, resolve=True))


@pytest.fixture
def needs(tmp_path):
    """What an option needs besides itself: data=folder, a folder of images."""
    from tests.helpers import COLOURS, make_folder

    root = make_folder(tmp_path / "pics", COLOURS, per_class=5)
    return {"data=folder": [f"data.root={root}"]}


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_reaches_its_own_part(make_config, needs, group, option):
    extra = needs.get(f"{group}={option}", [])
    cfg = make_config([f"{group}={option}", *extra])
    if group == "device":  # cuda or mps: built here only where the machine has it
        try:
            assert resolve_device(cfg.device.name).type in (option, "cpu", "cuda", "mps")
        except ConfigError as err:
            assert f"device={option} but" in str(err)
        return
    cfg, parts = _built(make_config, [f"{group}={option}", *extra])
    if group in ("attention", "embedding"):
        node = cfg.model[group]
        part = parts.model.blocks[0].attn if group == "attention" else parts.model.embed
        assert type(part) is get_object(node._target_)
    elif group == "optim":
        assert type(parts.optimizer) is get_object(cfg.optim._target_)
        assert parts.optimizer.param_groups[0]["lr"] == cfg.optim.lr
    elif group == "logger":
        assert type(parts.tracker) is get_object(cfg.logger._target_)
    elif group == "data":
        assert parts.data.name == option
        d = parts.data  # for data=folder, completed from the images
        images = torch.zeros(1, d.channels, d.image_size, d.image_size)
        assert parts.model(images).shape == (1, d.num_classes)  # sized by the data
    elif group == "model":
        images = torch.zeros(2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        assert parts.model(images).shape == (2, cfg.data.num_classes)


def test_defaults(make_config):
    cfg = make_config([])
    assert (cfg.device.name, cfg.data.name, cfg.trainer.epochs) == ("auto", "cifar10", 40)
    assert cfg.model.attention._target_.endswith("SoftmaxAttention")
    assert cfg.model.embedding.patch_size == 2


def test_the_mission_command_lines_compose_as_typed(make_config):
    cfg = make_config(["model=vitx", "device=cuda"])
    assert cfg.device.name == "cuda"
    assert cfg.model.attention._target_.endswith("LinearAttention")
    assert cfg.model.embedding._target_.endswith("ConvEmbedding")


def test_the_command_line_beats_the_preset(make_config):
    cfg = make_config(["model=vitx", "attention=softmax"])
    assert cfg.model.attention._target_.endswith("SoftmaxAttention")
    assert cfg.model.embedding._target_.endswith("ConvEmbedding")


@pytest.mark.parametrize("embedding", options("embedding"))
def test_vitl_means_one_token_per_pixel_with_any_embedding(make_config, embedding):
    """vitl sets patch_size 1; swapping its embedding keeps that (1024 tokens at 32x32)."""
    _, parts = _built(make_config, ["model=vitl", f"embedding={embedding}", "data=cifar10"])
    assert parts.model.num_tokens == 1024


@pytest.mark.parametrize("embedding", options("embedding"))
def test_vit_takes_each_embeddings_own_patch_size(make_config, embedding):
    """vit sets no patch size: each embedding brings its own default."""
    cfg, parts = _built(make_config, ["model=vit", f"embedding={embedding}", "data=cifar10"])
    assert parts.model.num_tokens == (32 // cfg.model.embedding.patch_size) ** 2


def test_field_overrides_reach_the_parts(make_config):
    cfg, parts = _built(
        make_config,
        ["attention=linear", "embedding=cnn", "model.dim=64", "optim.lr=3e-4", "trainer.epochs=5"],
    )
    assert parts.model.cls_token.shape[-1] == 64
    assert parts.optimizer.param_groups[0]["lr"] == 3e-4 and parts.settings.epochs == 5


def test_default_sweep_names_do_not_repeat(make_config):
    names = {make_config([]).sweep_name for _ in range(3)}
    assert len(names) == 3


def test_the_readme_lists_every_option_of_every_group():
    readme = (ROOT / "README.md").read_text()
    groups_table = readme.split("### Config groups")[1].split("\n\n")[1]
    for group in GROUPS:
        row = next(line for line in groups_table.splitlines() if line.startswith(f"| `{group}`"))
        listed = set(re.findall(r"[\w-]+", row.split("|")[2]))
        assert set(options(group)) <= listed, (group, row)


def test_a_size_only_sweep_builds_every_attention_with_every_embedding(cli, tmp_path):
    rows = size_only_sweep(cli, tmp_path)
    for attention in options("attention"):
        assert any(line.startswith(f"| {attention} ") for line in rows), attention


@pytest.mark.parametrize("sweep", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_wandb_sweep_definition_composes(make_config, sweep):
    definition = yaml.safe_load(sweep.read_text())
    assert definition["program"] == "src/run.py"
    overrides = []
    for key, spec in definition["parameters"].items():
        value = spec.get("value", (spec.get("values") or [spec.get("min")])[0])
        overrides.append(f"{key}={value}")
    _, parts = _built(make_config, overrides)
    assert parts.model is not None
