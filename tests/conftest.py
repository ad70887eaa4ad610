"""Shared fixtures, after Lightning's ``BoringModel``: a tiny Trainer, a tiny module and a tiny datamodule.

The classes live in :mod:`tests.tiny`, importable by scripts that DDP tests launch with ``python -m``.
"""

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.tiny import TinyClassifier, TwoFeatureDataModule, trainer


@pytest.fixture
def tiny_trainer(tmp_path: Path) -> Callable[..., pl.Trainer]:
    """``tiny_trainer(max_epochs=2, **kwargs)``: a CPU Trainer under ``tmp_path``, no logger, checkpoints or bar."""
    return partial(trainer, tmp_path)


@pytest.fixture
def tiny_module() -> TinyClassifier:
    """A seeded :class:`~tests.tiny.TinyClassifier`: BatchNorm, dropout, a linear head, plain SGD."""
    torch.manual_seed(0)
    return TinyClassifier()


@pytest.fixture
def tiny_datamodule() -> TwoFeatureDataModule:
    """A :class:`~tests.tiny.TwoFeatureDataModule`: label ``a``, features ``("a", "b")``, groups ``2a + b``."""
    return TwoFeatureDataModule()
