"""One training run of the toy (METHOD.md section 8): its settings, and everything the report keeps from it.

A run is a plain Lightning ``Trainer`` (no logger, checkpoints or progress bar: on the toy the Trainer's own
overhead dominates) with the project's measurement callbacks driven by a :class:`TrajectoryRecorder`, and one
:class:`FeatureProbe` at the end of training. It runs in a worker process, so both dataclasses are picklable.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.callbacks import FeatureProbe, ImportanceWeights, LearningRateScaling
from lightning_sam.datamodules.toy import ToyDataModule
from lightning_sam.experiments.trajectory import measurement_steps
from lightning_sam.experiments.trajectory_recorder import TrajectoryRecorder
from lightning_sam.sam_classifier import OptimizerName, SAMClassifier


@dataclass(frozen=True)
class ToyRunConfig:
    """Settings of one toy run; the defaults are ``train.py``'s and the model's (METHOD.md section 8).

    Args:
        turns: the spiral's turns, the hard feature's complexity.
        optimizer: ``"sgd"``, ``"lsam"`` or ``"sam"``.
        rho: perturbation radius (ignored by SGD).
        seed: seeds the data, the initialisation and the batch order.
        epochs: training epochs.
        batch_size: examples per step.
        n_train: training examples (the validation split has ``n_train // 2``).
        n_probe: examples in each probe split.
        hidden: width of both branches of the body.
        lr: base SGD learning rate (cosine decay to zero, momentum 0.9, weight decay 5e-4).
        measure_examples: training examples the Gini coefficients and ratios are measured on.
        keep_snapshots: keep the weights at every measured step (for the checkpoint figures).
    """

    turns: float = 1.0
    optimizer: OptimizerName = "sgd"
    rho: float = 0.0
    seed: int = 0
    epochs: int = 60
    batch_size: int = 128
    n_train: int = 2000
    n_probe: int = 2000
    hidden: int = 64
    lr: float = 0.05
    measure_examples: int = 1024
    keep_snapshots: bool = False

    @property
    def label(self) -> str:
        """``"SGD"``, ``"LSAM ρ=2"``, ...: the method and its radius."""
        return "SGD" if self.optimizer == "sgd" else f"{self.optimizer.upper()} ρ={self.rho:g}"


@dataclass
class ToyRunRecord:
    """What one run measured.

    Attributes:
        config: the run's settings.
        val_acc: final validation accuracy (both features carry the label there).
        val_loss: final validation loss.
        probe_error: feature -> final linear-probe error on the decorrelated probe-test split.
        step_losses: the batch training loss of every step.
        measurements: the trajectory: one dict per measured step (``step``, ``importance/...``, ``scaling/...``).
        batch_scaling: LSAM only: ``(step, ṽ_easy / v_easy, ṽ_hard / v_hard)`` per training batch.
        snapshots: step -> weights, when the config keeps them.
        final_state: the weights at the end of training.
        seconds: wall time of the run.
    """

    config: ToyRunConfig
    val_acc: float
    val_loss: float
    probe_error: dict[str, float]
    step_losses: list[float]
    measurements: list[dict[str, float]]
    batch_scaling: list[tuple[int, float, float]] = field(default_factory=list)
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    final_state: dict[str, Tensor] = field(default_factory=dict)
    seconds: float = 0.0


def toy_model(config: ToyRunConfig) -> SAMClassifier:
    """The run's model, freshly initialised from the global RNG."""
    return SAMClassifier(TwoBranchMLP(hidden=config.hidden), optimizer=config.optimizer, rho=config.rho, lr=config.lr)


def toy_data(config: ToyRunConfig) -> ToyDataModule:
    """The run's datamodule."""
    return ToyDataModule(
        batch_size=config.batch_size,
        seed=config.seed,
        n_train=config.n_train,
        n_val=max(2, config.n_train // 2),
        n_probe=config.n_probe,
        turns=config.turns,
    )


def train_toy_run(config: ToyRunConfig) -> ToyRunRecord:
    """Trains one toy model and returns its measurements (single-threaded: runs go in parallel processes)."""
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    pl.seed_everything(config.seed, verbose=False)
    model, datamodule = toy_model(config), toy_data(config)
    steps_per_epoch = -(-config.n_train // config.batch_size)
    never = config.epochs + 1  # the recorder calls measure() itself, at steps rather than epoch ends
    probe = FeatureProbe(every_n_epochs=never, at_fit_end=True)
    importance = ImportanceWeights(num_examples=config.measure_examples, every_n_epochs=never, lorenz_figure=False)
    scaling = LearningRateScaling(num_examples=config.measure_examples, every_n_epochs=never)
    recorder = TrajectoryRecorder(
        importance, scaling, measurement_steps(config.epochs * steps_per_epoch), config.keep_snapshots
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=config.epochs,
        logger=False,
        callbacks=[probe, importance, scaling, recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=config.epochs,  # validate once, at the end
    )
    trainer.fit(model, datamodule)
    metrics = trainer.callback_metrics
    last_probe = probe.history[-1]
    return ToyRunRecord(
        config=config,
        val_acc=float(metrics["val/acc"]),
        val_loss=float(metrics["val/loss"]),
        probe_error={name: last_probe[f"probe/{name}/error"] for name in datamodule.feature_names},
        step_losses=recorder.step_losses,
        measurements=recorder.measurements,
        batch_scaling=recorder.batch_scaling,
        snapshots=recorder.snapshots,
        final_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        seconds=time.perf_counter() - start,
    )
