"""The few lines ``train.py`` prints when a run ends: final metrics, where the logs are, how to look at them."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

SUMMARY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/worst_group_acc")
SUMMARY_PREFIXES = ("probe/", "importance/gini", "scaling/ratio", "transfer/")


def run_summary(trainer: pl.Trainer) -> str:
    """A short human summary of a finished ``fit``."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    shown = [k for k in SUMMARY_KEYS if k in metrics]
    shown += sorted(k for k in metrics if k.startswith(SUMMARY_PREFIXES) and not k.endswith("/error"))
    lines = [f"Finished after {trainer.current_epoch} epochs, {trainer.global_step} steps."]
    lines += [f"  {k:<28} {metrics[k]:.4f}" for k in shown]
    if trainer.logger is not None and trainer.logger.log_dir is not None:
        log_dir = Path(trainer.logger.log_dir)
        lines.append(f"Logs:        {log_dir}")
        if trainer.checkpoint_callback is not None and getattr(trainer.checkpoint_callback, "last_model_path", ""):
            lines.append(f"Checkpoint:  {trainer.checkpoint_callback.last_model_path}")
        elif trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path:
            lines.append(f"Checkpoint:  {trainer.checkpoint_callback.best_model_path}")
        lines.append(f"TensorBoard: tensorboard --logdir {log_dir.parent}")
    return "\n".join(lines)
