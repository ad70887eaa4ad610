"""Exact resume: a run stopped after epoch k and resumed ends exactly where an uninterrupted run ends.

Parameters, optimizer and scheduler state, the measurement callbacks' histories and the logged metrics.
"""

import pytest
import pytorch_lightning as pl
import torch

from lightning_sam import OPTIMIZERS, SAMClassifier
from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.callbacks import FeatureProbe, GroupAccuracy, ImportanceWeights, LearningRateScaling
from lightning_sam.datamodules import ToyDataModule

EPOCHS, STOP_AFTER = 4, 2


class Preempted(pl.Callback):
    """Ends the run after `epochs` epochs, as a pre-empted job would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def run(root, optimizer: str, extra=(), ckpt_path=None):
    pl.seed_everything(0)
    model = SAMClassifier(TwoBranchMLP(hidden=8), optimizer=optimizer, rho=0.5, lr=0.05)
    datamodule = ToyDataModule(batch_size=32, n_train=128, n_val=64, n_probe=64)
    callbacks = [FeatureProbe(), ImportanceWeights(num_examples=64), LearningRateScaling(num_examples=64),
                 GroupAccuracy()]  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        default_root_dir=root,
        callbacks=[*callbacks, *extra],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(model, datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer, model, callbacks


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resumed_run_equals_uninterrupted_run(tmp_path, optimizer):
    full_trainer, full, full_callbacks = run(tmp_path / "full", optimizer)
    first, _, _ = run(tmp_path / "first", optimizer, extra=[Preempted(STOP_AFTER)])
    assert first.current_epoch == STOP_AFTER
    checkpoint = first.checkpoint_callback.best_model_path
    trainer, resumed, callbacks = run(tmp_path / "resumed", optimizer, ckpt_path=checkpoint)

    assert trainer.global_step == full_trainer.global_step == EPOCHS * 4
    for (name, p), q in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    full_opt, resumed_opt = full.optimizers().optimizer.state_dict(), resumed.optimizers().optimizer.state_dict()
    for key, state in full_opt["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed_opt["state"][key]["momentum_buffer"])
    assert full.lr_schedulers().state_dict() == resumed.lr_schedulers().state_dict()
    for a, b in zip(full_callbacks, callbacks):
        assert len(a.history) == EPOCHS, type(a).__name__
        assert a.history == b.history, type(a).__name__
    final = {k: v.item() for k, v in full_trainer.callback_metrics.items()}
    assert final == {k: v.item() for k, v in trainer.callback_metrics.items()}
