"""Bad input, field by field: one line naming the field, exit 2, before anything starts."""

import json

import pytest

from tests.helpers import QUICK, TINY

# (overrides, what the one line must say). At least one case for every field a run reads.
CASES = [
    ("seed=-1", "seed=-1: expected an integer from 0 to 2**63 - 1"),
    ("seed=18446744073709551616", "seed=18446744073709551616: expected an integer from 0"),
    ("seed=abc", "seed='abc': expected an integer"),
    ("+foo=1", "foo is not a setting of RunConfig"),
    ("trainer.epochs=-1", "trainer.epochs=-1: expected an integer >= 0"),
    ("trainer.epochs=1.5", "trainer.epochs=1.5: expected an integer"),
    ("trainer.batch_size=0", "trainer.batch_size=0: expected a positive integer"),
    ("trainer.batch_size=abc", "trainer.batch_size='abc': expected an integer"),
    ("trainer.micro_batch_size=0", "trainer.micro_batch_size=0"),
    ("trainer.eval_batch_size=-8", "trainer.eval_batch_size=-8"),
    ("trainer.precision=fp16", "trainer.precision='fp16': expected auto, fp32 or bf16"),
    ("trainer.compile=maybe", "trainer.compile='maybe': expected true or false"),
    ("trainer.label_smoothing=1.0", "trainer.label_smoothing=1.0: expected a probability"),
    ("trainer.warmup_epochs=-1", "trainer.warmup_epochs=-1"),
    ("trainer.min_lr_ratio=2", "trainer.min_lr_ratio=2"),
    ("trainer.grad_clip=0", "trainer.grad_clip=0"),
    ("trainer.eval_interval=0", "trainer.eval_interval=0"),
    ("trainer.log_every=0", "trainer.log_every=0"),
    ("trainer.progress=2", "trainer.progress=2: expected true or false"),
    ("trainer.resume=maybe", "trainer.resume='maybe': expected true or false"),
    ("+trainer.foo=1", "trainer.foo is not a setting of TrainerSettings"),
    ("model.dim=100", "model.dim=100 is not divisible by model.heads=8"),
    ("model.dim=0", "model.dim=0: expected a positive integer"),
    ("model.dim=64.0", "model.dim=64.0: expected an integer"),
    ("model.depth=0", "model.depth=0"),
    ("model.heads=0", "model.heads=0"),
    ("model.mlp_dim=-1", "model.mlp_dim=-1"),
    ("model.dropout=1.0", "model.dropout=1.0: expected a probability in [0, 1)"),
    ("model.dropout=nan", "model.dropout=nan: expected a finite number"),
    ("model.pool=max", "model.pool='max': expected cls or mean"),
    ("model.pos=rope", "model.pos='rope'"),
    ("model.nanovit_quirks=yes", "model.nanovit_quirks='yes': expected true or false"),
    ("+model.foo=1", "model.foo is not a setting of VisionTransformer"),
    ("model.embedding.patch_size=3", "not divisible by model.embedding.patch_size=3"),
    ("model.embedding.patch_size=0", "model.embedding.patch_size=0"),
    ("+model.embedding.foo=1", "model.embedding.foo is not a setting of PatchEmbedding"),
    ("embedding=cnn model.embedding.channels=[32,0]", "model.embedding.channels=[32, 0]"),
    ("embedding=conv_patch model.embedding.channels=0", "model.embedding.channels=0"),
    ("attention=softmax model.attention.impl=flash", "model.attention.impl='flash'"),
    ("attention=linear model.attention.eps=-1", "model.attention.eps=-1"),
    ("attention=performer model.attention.features=0", "model.attention.features=0"),
    ("attention=performer model.attention.redraw_interval=0", "model.attention.redraw_interval=0"),
    ("attention=nystrom model.attention.landmarks=0", "model.attention.landmarks=0"),
    ("attention=nystrom model.attention.pinv_iterations=-1", "model.attention.pinv_iterations=-1"),
    ("attention=linformer model.attention.k=0", "model.attention.k=0"),
    ("+model.attention.seq_len=100", "model.attention.seq_len is not a setting"),
    ("optim.lr=0", "optim.lr=0: expected a positive number"),
    ("optim.lr=-1e-3", "optim.lr=-0.001"),
    ("optim.lr=inf", "optim.lr=inf: expected a finite number"),
    ("optim.weight_decay=-1", "optim: Invalid weight_decay value: -1"),
    ("optim.betas=[0.9,1.5]", "optim: Invalid beta parameter at index 1"),
    ("optim=sgd optim.momentum=-0.5", "optim: Invalid momentum value: -0.5"),
    ("+optim.foo=1", "optim.foo is not a setting of AdamW"),
    ("data.subset=-1", "data.subset=-1: expected a positive integer or null"),
    ("data.subset=0", "data.subset=0"),
    ("data.val_fraction=1.0", "data.val_fraction=1.0: expected a number in [0, 1)"),
    ("data.loader=dali", "data.loader='dali': expected device or torchvision"),
    ("data.mean=[0.5]", "data.mean=[0.5]: expected one number per channel (3)"),
    ("data.std=[0,0,0]", "data.std=[0, 0, 0]: expected positive numbers"),
    ("data.workers=-1", "data.workers=-1"),
    ("data.flip=sometimes", "data.flip='sometimes': expected true or false"),
    ("data.crop_padding=-1", "data.crop_padding=-1: expected an integer >= 0"),
    ("data.num_classes=1", "data.num_classes=1: expected an integer >= 2"),
    ("+model.image_size=16", "model.image_size is not set in the config"),
    ("data.source.test_fraction=1.5", "data.source.test_fraction=1.5"),
    ("+data.source.foo=1", "data.source.foo is not a setting of load_digits"),
    ("data=cifar10 data.root=absent", "CIFAR-10 not found"),
    (
        "data=fashion_mnist data.root=absent data.source.system_dir=absent "
        "data.source.download=false",
        "Fashion-MNIST not found",
    ),
    (
        "data=fashion_mnist data.root=/etc/hostname data.source.download=false",
        "Fashion-MNIST not found",
    ),
    ("device.name=tpu", "device.name='tpu': expected auto, cpu, cuda, cuda:N or mps"),
    ("logger=wandb logger.mode=sometimes", "logger.mode='sometimes'"),
    ("+logger.foo=1", "logger.foo is not a setting of NullTracker"),
]


@pytest.mark.parametrize(("override", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2_before_anything_starts(cli, tmp_path, override, message):
    result = cli(*TINY, "trainer.epochs=1", *override.split(), "hydra.run.dir=run")
    if override.startswith("device") and result.returncode == 0:
        pytest.skip("this machine has the device")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    run = tmp_path / "run"
    assert not (run / "wandb").exists() and not (run / "history.csv").exists()
    if override.startswith("trainer.resume"):  # whether the directory may be taken is unknown
        assert not (run / "summary.json").exists()
        return
    summary = json.loads((run / "summary.json").read_text())  # the record says why
    assert summary["status"] == "failed" and message in summary["error"]


@pytest.mark.parametrize(("override", "message"), CASES[::12], ids=[c[0] for c in CASES[::12]])
def test_bad_input_leaves_an_existing_run_directory_byte_identical(
    cli, tmp_path, finished_run, override, message
):
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    for resume in ("false", "true"):
        result = cli(*QUICK, *override.split(), "hydra.run.dir=run", f"trainer.resume={resume}")
        assert result.returncode == 2 and result.stderr.startswith("error: ")
        assert "Traceback" not in result.stdout + result.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


RENAMED_KEY = "model.seed_quirks was renamed to model.nanovit_quirks"
NEEDS_RUN_PY = pytest.mark.xfail(
    strict=True,
    reason="without +, Hydra refuses a key the config lacks before vitsweep runs (exit 1, "
    "its own message); only src/run.py can turn that into the one line",
)


@pytest.mark.parametrize(
    "override",
    ["+model.seed_quirks=true", pytest.param("model.seed_quirks=true", marks=NEEDS_RUN_PY)],
)
def test_a_renamed_key_names_its_new_name_in_one_line(cli, tmp_path, override):
    result = cli(*TINY, override, "hydra.run.dir=run")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {RENAMED_KEY}"], result.stderr
    assert not (tmp_path / "run" / "history.csv").exists()


def test_a_bad_field_in_a_sweep_is_a_failed_row_and_the_sweep_goes_on(cli, tmp_path):
    result = cli("-m", "model.heads=4,3,8", "trainer.epochs=0", *TINY, "sweep_name=broken")
    assert result.returncode == 1  # after the table: something failed
    import pandas as pd

    table = pd.read_csv(tmp_path / "results" / "broken" / "comparison.csv")
    assert list(table["status"]) == ["sized", "failed", "sized"]
    assert "not divisible by model.heads=3" in table["error"].iloc[1]
