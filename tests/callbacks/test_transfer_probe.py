"""TransferProbe through a tiny Trainer on a DomainBed fixture: the target-domain probe accuracy after training."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1] / "datamodules"))
from domainbed_fixtures import write_domainbed  # noqa: E402

from lightning_sam import SAMClassifier  # noqa: E402
from lightning_sam.callbacks.transfer_probe import TransferProbe  # noqa: E402
from lightning_sam.datamodules.domainbed import DomainBedDataModule  # noqa: E402
from lightning_sam.functional.linear_probe import fit_linear_probe  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*(canonical|subset|sanity|LeafSpec).*")


class TinyBody(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Flatten(), nn.Linear(3 * 8 * 8, 12), nn.ReLU())
        self.out_features = 12


def _fit(root: Path, callback: TransferProbe, test_domain: str | None, **trainer_kwargs) -> tuple:
    pl.seed_everything(0)
    dm = DomainBedDataModule(root, batch_size=16, dataset="PACS", test_domain=test_domain, image_size=8)
    model = SAMClassifier(TinyBody(), num_classes=7, optimizer="lsam", rho=0.05, lr=0.01)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(model, dm)
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
    assert probe.accuracy == pytest.approx(expected) and probe.accuracy > 1 / 6  # above chance on 6 classes
    assert trainer.callback_metrics["transfer/cartoon/acc"].item() == pytest.approx(expected)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        logged = [float(row["transfer/cartoon/acc"]) for row in csv.DictReader(f) if row.get("transfer/cartoon/acc")]
    assert len(logged) == 3 and logged[-1] == pytest.approx(expected)  # two validation epochs, then the end of fit


def test_datamodule_without_test_domain_is_refused_with_the_fix(tmp_path: Path) -> None:
    write_domainbed(tmp_path, "PACS", per_class=1)
    with pytest.raises(ValueError, match="TransferProbe needs a datamodule with a held-out target domain.*test_domain"):
        _fit(tmp_path, TransferProbe(), None, max_epochs=1, logger=False)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"l2_grid": []}, "l2_grid"), ({"l2_grid": [0.1, -1.0]}, "l2_grid"), ({"every_n_epochs": -1}, "every_n_epochs")],
)
def test_invalid_argument_is_named_in_the_error(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        TransferProbe(**kwargs)
