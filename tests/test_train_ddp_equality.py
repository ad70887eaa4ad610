"""``python train.py`` on two DDP processes logs every measurement of the one-process run, for the same model.

The model does not move (lr 1e-12 rounds away in float32), so any difference comes from how the runs shard, gather,
batch and sync. The sizes are odd on purpose: a DistributedSampler would pad the validation data with a repeated
example, the phantom batches do not divide evenly between the ranks (4 batches, the last one short), and the probe
shards are uneven. The two-process run has half the per-device batch: its global batch, from which the phantom
points are formed, is the one-process batch.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_sam import SAMClassifier
from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.datamodules import ToyDataModule
from tests.train_py import ROOT, TRAIN

# a noisy easy feature: accuracies below 1; evaluation in training-sized batches, several per rank (0: batch_size)
TOY = {"n_train": 255, "n_val": 127, "n_probe": 201, "sigma_easy": 1.0, "evaluation_batch_size": 0}
BATCH = 64  # the global batch
FLAGS = [
    *(f"--data.init_args.{k}={v}" for k, v in TOY.items()),
    "--model.lr=1e-12", "--trainer.max_epochs=1", "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]  # fmt: skip
# every measurement family train.py logs, and its validation metrics (it runs no test stage; test_evaluation_shards.py)
FAMILIES = (
    "probe/", "importance/", "scaling/", "val/group_", "val/worst_group_acc", "val/avg_acc", "val/loss", "val/acc",
)  # fmt: skip


def half_trained_weights(path: Path) -> None:
    """``train.py``'s toy model after 20 full-batch SGD steps: fitting, not fitted (group accuracies 0.8-0.9)."""
    torch.manual_seed(0)
    model = SAMClassifier(TwoBranchMLP(hidden=64, block_size=1), num_classes=2)
    data = ToyDataModule(**TOY)
    data.setup()
    x, y = next(iter(DataLoader(data.train_dataset, batch_size=TOY["n_train"])))[:2]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    torch.save(model.state_dict(), path)


def logged_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a run wrote to TensorBoard: key -> ``[(step, value), ...]``."""
    events = EventAccumulator(str(root / "lightning_logs" / "version_0"), size_guidance={"scalars": 0}).Reload()
    return {key: [(e.step, e.value) for e in events.Scalars(key)] for key in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict, str]:
    out = tmp_path_factory.mktemp("train_ddp")
    half_trained_weights(out / "weights.pt")
    flags = [*FLAGS, f"--weights_from={out / 'weights.pt'}"]
    two_processes = subprocess.Popen(
        [sys.executable, "train.py", *flags, f"--data.init_args.batch_size={BATCH // 2}",
         f"--trainer.default_root_dir={out / 'two'}",
         "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"],
        cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    # the one-process run, in this process, while the other one starts its two
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["train.py", *flags, f"--data.init_args.batch_size={BATCH}",
                                        f"--trainer.default_root_dir={out / 'one'}"])  # fmt: skip
            TRAIN["main"]()
        stdout, stderr = two_processes.communicate(timeout=300)
    finally:
        two_processes.kill()  # a no-op once it has ended
    assert two_processes.returncode == 0, stderr[-4000:]
    return logged_scalars(out / "one"), logged_scalars(out / "two"), stdout


def test_two_process_train_py_logs_every_measurement_of_the_one_process_run_within_1e_6(runs):
    one, two, stdout = runs
    assert "Finished after 1 epochs, 4 steps." in stdout  # 255 examples (one padded) / (2 devices x 32)
    # training values are left out: Lightning's DDP sampler deals the training examples to other batches
    # (and pads one), so the step and epoch values of training describe other batches
    compared = {key: values for key, values in one.items() if not key.startswith("train/")}
    for family in FAMILIES:
        assert any(key.startswith(family) for key in compared), f"nothing of {family} was logged"
    for group in (0, 3):  # the groups of the toy's validation data; a repeated example would move these
        assert 0 < compared[f"val/group_{group}/acc"][-1][1] < 1
    for key, values in compared.items():
        assert key in two, f"{key} is not logged by the two-process run"
        assert [step for step, _ in two[key]] == [step for step, _ in values], key
        for (_, expected), (_, value) in zip(values, two[key], strict=True):
            assert value == pytest.approx(expected, abs=1e-6), key
