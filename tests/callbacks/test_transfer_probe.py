"""TransferProbe through a tiny Trainer on a DomainBed fixture: the target-domain probe accuracy after training."""

from __future__ import annotations

import csv
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from lightning_sam import SAMClassifier
from lightning_sam.callbacks.transfer_probe import TransferProbe
from lightning_sam.datamodules.demos import write_tiny_domainbed as write_domainbed
from lightning_sam.datamodules.domainbed import DomainBedDataModule
from lightning_sam.functional.linear_probe import fit_linear_probe

pytestmark = pytest.mark.filterwarnings("ignore:.*(canonical|subset|sanity|LeafSpec).*")


class TinyBody(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Flatten(), nn.Linear(3 * 8 * 8, 12), nn.ReLU())
        self.out_features = 12


def _fit(
    root: Path, callback: TransferProbe, test_domain: str | None, ckpt_path: Path | None = None, **trainer_kwargs
) -> tuple:
    pl.seed_everything(0)
    dm = DomainBedDataModule(root, batch_size=16, dataset="PACS", test_domain=test_domain, image_size=8)
    # a constant schedule: a resume may extend the run (a longer cosine would be refused)
    model = SAMClassifier(TinyBody(), num_classes=7, optimizer="lsam", rho=0.05, lr=0.01, lr_schedule="constant")
    options = dict(callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, enable_model_summary=False, **{**options, **trainer_kwargs})
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer, model, dm


def test_target_domain_probe_accuracy_is_logged_after_fit(tmp_path: Path) -> None:
    write_domainbed(tmp_path, "PACS", per_class=5, lacking=(("cartoon", "horse"),))
    probe = TransferProbe(every_n_epochs=1)
    logger = CSVLogger(tmp_path / "logs", name="run")
    trainer, model, dm = _fit(tmp_path, probe, "cartoon", max_epochs=2, logger=logger, log_every_n_steps=1)
    assert model.training  # the callback restores the mode it found

    # the same probe fitted by hand on the trained model's head inputs of the target's in/out parts
    def represent(dataset):
        x = torch.stack([dataset[i].x for i in range(len(dataset))])
        with torch.no_grad():
            return model.eval().representation(x), dataset.y

    expected = fit_linear_probe(*represent(dm.target_fit_dataset), num_classes=7).accuracy(
        *represent(dm.target_eval_dataset)
    )
    assert probe.accuracy == pytest.approx(expected)
    assert probe.accuracy > 1 / 6
    assert trainer.callback_metrics["transfer/cartoon/acc"].item() == pytest.approx(expected)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        logged = [float(row["transfer/cartoon/acc"]) for row in csv.DictReader(f) if row.get("transfer/cartoon/acc")]
    # two validation epochs; the end of fit sees the weights the last one measured and does not repeat it
    assert len(logged) == 2
    assert logged[-1] == pytest.approx(expected)
    assert [(h["epoch"], h["step"]) for h in probe.history] == [(0, trainer.global_step // 2), (1, trainer.global_step)]
    assert probe.history[-1]["transfer/cartoon/acc"] == probe.accuracy


def test_without_every_n_epochs_the_probe_runs_once_when_training_ends(tmp_path: Path) -> None:
    write_domainbed(tmp_path, "PACS", per_class=3)
    probe = TransferProbe()
    trainer, _, _ = _fit(tmp_path, probe, "cartoon", max_epochs=2, logger=False)
    assert [(h["epoch"], h["step"]) for h in probe.history] == [(trainer.current_epoch, trainer.global_step)]
    assert trainer.callback_metrics["transfer/cartoon/acc"].item() == pytest.approx(probe.accuracy)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_history_and_accuracy_resume_from_a_checkpoint(tmp_path: Path) -> None:
    write_domainbed(tmp_path, "PACS", per_class=3)
    first = TransferProbe(every_n_epochs=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callbacks = [first, checkpoint]
    _fit(tmp_path, first, "cartoon", max_epochs=1, logger=False, callbacks=callbacks, enable_checkpointing=True)

    restored = TransferProbe()
    restored.load_state_dict(first.state_dict())
    assert restored.history == first.history
    assert restored.accuracy == first.accuracy

    resumed = TransferProbe(every_n_epochs=1)
    _fit(tmp_path, resumed, "cartoon", max_epochs=2, logger=False, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    assert resumed.history[0] == first.history[0]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> tuple[dict, dict, dict]:
    script = Path(__file__).with_name("ddp_transfer_fit.py")
    out = tmp_path_factory.mktemp("ddp_transfer")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=out
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    one = runpy.run_path(str(script))["run"](devices=1, root=out / "one")
    return ranks[0], ranks[1], one


def test_two_process_probe_equals_one_process_on_every_rank(ddp_runs) -> None:
    rank0, rank1, one = ddp_runs
    assert rank0["history"] == rank1["history"]
    assert len(rank0["history"]) == 1
    # each rank extracted half the target data; gathered in dataset order, it is the one-process probe
    assert rank0["accuracy"] == rank1["accuracy"] == one["accuracy"] == one["expected"]
    assert rank0["history"][0]["transfer/target/acc"] == one["history"][0]["transfer/target/acc"]


def test_datamodule_without_test_domain_is_refused_with_the_fix(tmp_path: Path) -> None:
    write_domainbed(tmp_path, "PACS", per_class=1)
    refused = r"TransferProbe needs a datamodule with a held-out target domain.*test_domain"
    with pytest.raises(ValueError, match=refused):
        _fit(tmp_path, TransferProbe(), None, max_epochs=1, logger=False)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"l2_grid": []}, "l2_grid"),
        ({"l2_grid": [0.1, -1.0]}, "l2_grid"),
        ({"every_n_epochs": -1}, "every_n_epochs"),
        ({"representation": 3}, "representation"),
    ],
)
def test_invalid_argument_is_named_in_the_error(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        TransferProbe(**kwargs)
