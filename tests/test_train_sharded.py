"""``python train.py --trainer.strategy ModelParallelStrategy``: the body sharded over two CPU processes (FSDP2).

The run logs every measurement of the one-process run for the same, frozen model (as test_train_ddp_equality.py
checks for DDP, with the same data and flags: the probes, the importance weights and the scaling ratios read the
representation and form the phantom points of a sharded model), writes sharded checkpoints (folders), and
``--ckpt_path last`` resumes from them.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

from tests.test_train_ddp_equality import BATCH, FAMILIES, FLAGS, half_trained_weights, logged_scalars
from tests.train_py import ROOT, TRAIN, run_in_process

SHARDED = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ModelParallelStrategy"]
# a constant schedule: the resume trains a second epoch (a cosine schedule would have to span both from the start)
CHECKPOINTED = ["--trainer.enable_checkpointing=true", "--model.lr_schedule=constant"]
# 129 validation examples, 32 per process and batch (FLAGS evaluate in training-sized batches): unpadded shares would
# be 3 batches on one rank and 2 on the other, and under FSDP2 (a forward is a collective) the third would wait forever
RUN = [*FLAGS, *CHECKPOINTED, "--data.init_args.n_val=129"]


def sharded_train_py(*flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *flags, *SHARDED],
        cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def finished(process: subprocess.Popen) -> str:
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()  # a no-op once it has ended
    assert process.returncode == 0, stderr[-4000:]
    return stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict, str, Path]:
    out = tmp_path_factory.mktemp("train_sharded")
    half_trained_weights(out / "weights.pt")
    flags = [*RUN, f"--weights_from={out / 'weights.pt'}"]
    sharded = sharded_train_py(
        *flags, f"--data.init_args.batch_size={BATCH // 2}", f"--trainer.default_root_dir={out / 'two'}"
    )
    with pytest.MonkeyPatch.context() as patch:  # the one-process run, here, while the other one starts
        patch.setattr(sys, "argv", ["train.py", *flags, f"--data.init_args.batch_size={BATCH}",
                                    f"--trainer.default_root_dir={out / 'one'}"])  # fmt: skip
        TRAIN["main"]()
    stdout = finished(sharded)
    return logged_scalars(out / "one"), logged_scalars(out / "two"), stdout, out


def test_sharded_train_py_logs_every_measurement_of_the_one_process_run_within_1e_6(runs):
    one, two, stdout, _ = runs
    assert "Finished after 1 epochs, 4 steps." in stdout
    # train/* as under DDP; val/* because sharded evaluation keeps Lightning's sampler, whose padding repeats an
    # example here (FeatureDataModule._evaluation_shard): logged, not compared
    assert {key for key in one if key.startswith("val/")} <= set(two)
    compared = {key: values for key, values in one.items() if not key.startswith(("train/", "val/"))}
    for family in FAMILIES:
        assert any(key.startswith(family) for key in (two if family.startswith("val/") else compared)), family
    for key, values in compared.items():
        assert key in two, f"{key} is not logged by the sharded run"
        assert [step for step, _ in two[key]] == [step for step, _ in values], key
        for (_, expected), (_, value) in zip(values, two[key], strict=True):
            assert value == pytest.approx(expected, abs=1e-6), key


def test_ckpt_path_last_resumes_the_sharded_checkpoint(runs):
    *_, out = runs
    last = out / "two" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_dir()  # the shards of every rank and the metadata
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 4
    flags = [*RUN, "--trainer.max_epochs=2", "--ckpt_path=last"]
    stdout = finished(
        sharded_train_py(
            *flags, f"--data.init_args.batch_size={BATCH // 2}", f"--trainer.default_root_dir={out / 'two'}"
        )
    )
    assert "Finished after 2 epochs, 8 steps." in stdout
    resumed = out / "two" / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed / "meta.pt", weights_only=True)["global_step"] == 8


def test_weights_from_a_sharded_checkpoint_names_the_conversion(runs, monkeypatch, capsys):
    *_, out = runs
    last = out / "two" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    code, printed = run_in_process(monkeypatch, capsys, f"--weights_from={last}", f"--trainer.default_root_dir={out}")
    assert code == 2
    assert "is a sharded checkpoint" in printed
    assert "format_utils dcp_to_torch" in printed


def test_model_parallel_strategy_is_data_parallel_over_every_process():
    sharding = TRAIN["sharding_strategy"]
    resolved = sharding(Namespace(strategy="ModelParallelStrategy", devices="4", num_nodes=2))
    assert resolved.class_path == "pytorch_lightning.strategies.ModelParallelStrategy"
    assert (resolved.init_args.data_parallel_size, resolved.init_args.tensor_parallel_size) == (8, 1)
    assert (
        sharding(Namespace(strategy="ModelParallelStrategy", devices=[0, 1], num_nodes=1)).init_args.data_parallel_size
        == 2
    )
    assert sharding(Namespace(strategy="ddp", devices="2", num_nodes=1)) is None
    given = Namespace(class_path="pytorch_lightning.strategies.ModelParallelStrategy",
                      init_args=Namespace(data_parallel_size=1, tensor_parallel_size=2))  # fmt: skip
    assert sharding(Namespace(strategy=given, devices="2", num_nodes=1)) is None  # sizes given: kept
    with pytest.raises(TRAIN["UsageError"], match=r"--trainer\.devices N"):
        sharding(Namespace(strategy="ModelParallelStrategy", devices="auto", num_nodes=1))
