"""Every callback of the package leaves a BatchNorm layer the user froze with ``.eval()`` frozen through ``fit``.

The README promises the callbacks change no train/eval mode and no BatchNorm buffer; a callback that switches the
model back with ``model.train()`` un-freezes the layer, and its running statistics then drift with the batches.
"""

from collections.abc import Callable

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader

import lightning_sam.callbacks
from lightning_sam import SAMClassifier
from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.callbacks import (
    FeatureProbe,
    GroupAccuracy,
    ImportanceWeights,
    LearningRateScaling,
    SharpnessAware,
    TransferProbe,
)
from lightning_sam.datamodules import ToyDataModule

# the frozen layer is in eval mode at the start of training on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*(in eval mode at the start of training|LeafSpec).*")


class NormalisedTwoBranchMLP(nn.Module):
    """TwoBranchMLP behind a BatchNorm of its input; declares the same ``out_features`` and ``feature_blocks``."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.branches = TwoBranchMLP(hidden=8)
        self.out_features = self.branches.out_features
        self.feature_blocks = self.branches.feature_blocks

    def forward(self, x: Tensor) -> Tensor:
        return self.branches(self.norm(x))


class ToyTransferDataModule(ToyDataModule):
    """The toy, its probe splits standing in for a held-out target domain (what TransferProbe needs)."""

    test_domain = "probe"

    def transfer_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        return self.probe_dataloaders()


# every callback with its minimal setup; TransferProbe measures when training ends (every_n_epochs=0), where no
# Lightning loop restores the modes after it
CALLBACKS: dict[str, Callable[[], list[Callback]]] = {
    "FeatureProbe": lambda: [FeatureProbe()],
    "GroupAccuracy": lambda: [GroupAccuracy()],
    "ImportanceWeights": lambda: [ImportanceWeights(num_examples=64, lorenz_figure=False)],
    "LearningRateScaling": lambda: [LearningRateScaling(num_examples=64)],
    "TransferProbe": lambda: [TransferProbe()],
    "SharpnessAware": lambda: [SharpnessAware(rho=0.05)],  # trains an automatic-optimization module
}


class AutomaticClassifier(pl.LightningModule):
    """The same body and head with automatic optimization (what SharpnessAware serves)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(body.out_features, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_every_callback_of_the_package_is_covered() -> None:
    assert set(CALLBACKS) == set(lightning_sam.callbacks.__all__)


@pytest.mark.parametrize("name", sorted(CALLBACKS))
def test_callback_leaves_a_frozen_batchnorm_layer_frozen(name: str, tmp_path) -> None:
    pl.seed_everything(0)
    body = NormalisedTwoBranchMLP()
    with torch.no_grad():  # statistics of a "pretrained" layer, away from the defaults a reset would give
        body.norm.running_mean.fill_(0.5)
        body.norm.running_var.fill_(2.0)
    body.norm.eval()
    frozen = {k: v.clone() for k, v in body.norm.named_buffers()}
    if name == "SharpnessAware":
        model = AutomaticClassifier(body)
    else:
        model = SAMClassifier(body, num_classes=2, optimizer="lsam", rho=0.05, lr=0.05)
    datamodule = ToyTransferDataModule(batch_size=32, n_train=128, n_val=64, n_probe=128)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, callbacks=CALLBACKS[name](), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule)

    assert not body.norm.training
    assert model.training
    assert body.branches.training
    for key, value in body.norm.named_buffers():
        assert torch.equal(value, frozen[key]), key
