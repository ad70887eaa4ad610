"""Default readers of a batch's fields, for :class:`~lightning_sam.batch.FeatureBatch` or plain ``(x, y)`` batches.

Callbacks take these as adapter arguments; a project with another batch layout passes its own one-line functions,
e.g. ``batch_features=lambda batch: batch["attributes"]``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def batch_input(batch: Any) -> Tensor:
    """The model input: ``batch.x``, i.e. ``batch[0]``."""
    return batch[0]


def batch_target(batch: Any) -> Tensor:
    """The ``(B,)`` class labels: ``batch.y``, i.e. ``batch[1]``."""
    return batch[1]


def batch_features(batch: Any) -> Tensor:
    """The ``(B, F)`` feature labels of a :class:`~lightning_sam.batch.FeatureBatch` (``batch.features``)."""
    return batch.features


def batch_group(batch: Any) -> Tensor:
    """The ``(B,)`` group ids of a :class:`~lightning_sam.batch.FeatureBatch` (``batch.group``)."""
    return batch.group
