"""Train a classifier with SGD, SAM, ASAM or LSAM and watch the mechanism in TensorBoard.

    python train.py                                    # configs/toy.yaml: LSAM on the toy, ~1-2 min on a laptop CPU
    python train.py --model.optimizer sgd              # the baseline
    python train.py --config configs/waterbirds.yaml --data.root /path/to/data
    python train.py --print_config                     # every flag, as YAML

Every constructor argument of the model (``--model.*``), the datamodule (``--data.*``) and the Trainer
(``--trainer.*``) is a flag; ``--measure.*`` switches the measurement callbacks; ``--ckpt_path`` resumes.
With no ``--config`` the defaults are ``configs/toy.yaml``; a ``--config`` replaces them as a whole.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning import Callback, LightningDataModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from lightning_sam import SAMClassifier
from lightning_sam.callbacks import FeatureProbe, GroupAccuracy, ImportanceWeights, LearningRateScaling

TOY_CONFIG = Path(__file__).resolve().parent / "configs" / "toy.yaml"

SUMMARY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/worst_group_acc")
SUMMARY_PREFIXES = ("probe/", "importance/gini", "scaling/ratio", "transfer/")
MECHANISM_KEYS = (
    "scaling/log_relative_gain",
    "scaling/flip_rate",
    "importance/gini_within_class_real",
    "importance/gini_within_class_phantom",
    "train/rho_relative",
)
MECHANISM_NOTE = (
    "  log relative gain > 0: the phantom head speeds the hard feature relative to the easy one; within-class "
    "phantom Gini < real: the phantom re-balances examples; flips should be ~0 (if not, rho is too large)."
)


@dataclass
class Measurements:
    """The ``--measure.*`` flags.

    Args:
        probe: per-feature linear probes (``probe/<feature>/acc``), on datamodules with probe splits.
        importance: Gini coefficients and Lorenz curves of real and phantom importance weights.
        scaling: the learning-rate scaling ratios ``v_hard/v_easy`` and ``ṽ_hard/ṽ_easy`` (feature directions from
            the body's ``feature_blocks``, else from the probes).
        groups: per-group and worst-group accuracy, on datamodules with groups.
        every_n_epochs: how often the epoch-end measurements run (``0``: only after the last epoch).
    """

    probe: bool = True
    importance: bool = True
    scaling: bool = True
    groups: bool = True
    every_n_epochs: int = 1

    def __post_init__(self) -> None:
        if self.every_n_epochs < 0:
            raise ValueError(
                f"measure.every_n_epochs must be >= 0 (0: only after the last epoch), got {self.every_n_epochs}"
            )


def measurement_callbacks(measure: Measurements, datamodule: pl.LightningDataModule) -> list[Callback]:
    """The callbacks that ``measure`` asks for and ``datamodule`` can feed."""
    n = measure.every_n_epochs
    features = tuple(getattr(datamodule, "feature_names", ()))
    has_probe_splits = bool(features) and hasattr(datamodule, "probe_dataloaders")
    callbacks: list[Callback] = []
    if measure.probe and has_probe_splits:
        callbacks.append(FeatureProbe(every_n_epochs=n))
    if measure.importance:
        callbacks.append(ImportanceWeights(every_n_epochs=n))
    if measure.scaling and len(features) >= 2:
        callbacks.append(LearningRateScaling(every_n_epochs=n))
    if measure.groups and getattr(datamodule, "num_groups", 0) > 0:
        callbacks.append(GroupAccuracy())
    return callbacks


def run_summary(trainer: pl.Trainer) -> str:
    """A short human summary of a finished ``fit``: final metrics, the mechanism, where the logs and checkpoint are."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    shown = [k for k in SUMMARY_KEYS if k in metrics]
    shown += sorted(
        k for k in metrics if k.startswith(SUMMARY_PREFIXES) and not k.endswith("/error") and k not in MECHANISM_KEYS
    )
    # a step-and-epoch metric reaches callback_metrics as `key_epoch` (and possibly `key`)
    mechanism = {k: metrics.get(k, metrics.get(f"{k}_epoch")) for k in MECHANISM_KEYS}
    mechanism = {k: v for k, v in mechanism.items() if v is not None}

    lines = [f"Finished after {trainer.current_epoch} epochs, {trainer.global_step} steps."]
    lines += [f"  {k:<28} {metrics[k]:.4f}" for k in shown]
    if mechanism:
        lines.append("Mechanism:")
        lines += [f"  {k:<36} {v:.4f}" for k, v in mechanism.items()]
        lines.append(MECHANISM_NOTE)
    checkpoint = trainer.checkpoint_callback
    checkpoint_path = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
    if checkpoint_path:
        lines.append(f"Checkpoint:  {checkpoint_path}")
    for logger in trainer.loggers:
        if logger.log_dir is None:
            continue
        lines.append(f"Logs:        {logger.log_dir}")
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"TensorBoard: tensorboard --logdir {logger.root_dir}")
        elif isinstance(logger, CSVLogger):
            lines.append(f"CSV:         {logger.experiment.metrics_file_path}")
    return "\n".join(lines)


class TrainCLI(LightningCLI):
    """LightningCLI without subcommands: parse, build, fit, summarise."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_class_arguments(Measurements, "measure")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume from")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        configured = self.config_init.get("trainer.callbacks") or []
        extra = measurement_callbacks(self.config_init["measure"], self.datamodule)
        return super().instantiate_trainer(callbacks=[*configured, *extra], **kwargs)


def default_config_files(argv: list[str]) -> list[str]:
    """``configs/toy.yaml`` unless ``argv`` names a ``--config``.

    A config is a whole experiment: merged over the toy, the toy's ``max_epochs`` and ``log_every_n_steps`` would
    leak into, say, a DomainBed run that sets only ``max_steps``.
    """
    named = any(arg in ("-c", "--config") or arg.startswith("--config=") for arg in argv)
    return [] if named else [str(TOY_CONFIG)]


def main() -> None:
    cli = TrainCLI(
        SAMClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        run=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_config_files": default_config_files(sys.argv[1:])},
    )
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config["ckpt_path"], weights_only=True)
    if cli.trainer.is_global_zero:
        print(run_summary(cli.trainer))


if __name__ == "__main__":
    main()
