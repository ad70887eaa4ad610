"""Experiments that reproduce the paper's findings with this code: ``python -m lightning_sam.experiments.toy``.

The runner module itself is not imported here, so that ``python -m`` runs it without a second import.
"""

from lightning_sam.experiments.toy_run import ToyRunConfig, ToyRunRecord, train_toy_run

__all__ = ["ToyRunConfig", "ToyRunRecord", "train_toy_run"]
