"""What the callbacks need from a model or a datamodule, as small structural types.

Any object with these attributes qualifies (every ``lightning_sam`` datamodule and ``SAMClassifier`` do); the
callbacks check them with ``isinstance`` in ``setup`` and fall back to their own arguments otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_sam.functional.perturbation import PerturbationSpec


@runtime_checkable
class FeatureData(Protocol):
    """A datamodule with annotated features and decorrelated probe splits (docs/method.md section 6)."""

    feature_names: tuple[str, ...]

    def probe_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """The (fit, evaluate) probe loaders; batches carry ``features`` ``(B, F)`` in ``feature_names`` order."""
        ...


@runtime_checkable
class GroupData(Protocol):
    """A datamodule whose examples belong to groups (docs/method.md section 7)."""

    num_groups: int

    def train_group_counts(self) -> Tensor:
        """``(num_groups,)`` example counts of the training split."""
        ...


@runtime_checkable
class TrainData(Protocol):
    """A datamodule exposing its training split as a map-style dataset."""

    train_dataset: Dataset | None


@runtime_checkable
class BatchIndexable(Protocol):
    """A dataset that gathers a whole collated batch at once (``FeatureTensorDataset``, data held in memory).

    ``batch(indices)`` must equal the default collate function applied to ``[dataset[i] for i in indices]``; the
    callbacks then read their fixed splits without per-example work.
    """

    def batch(self, indices: Sequence[int] | Tensor) -> Any:
        """The collated batch of the examples at ``indices``, in that order."""
        ...


@runtime_checkable
class PerturbedModel(Protocol):
    """A module (``SAMClassifier``) or callback (``SharpnessAware``) declaring its phantom point: measurements match."""

    perturbation_spec: PerturbationSpec


@runtime_checkable
class DeclaresRho(Protocol):
    """A module that declares only its radius and scope (the measurements then assume SAM, not ASAM, no head bias)."""

    rho: float
    perturbation_scope: Literal["head", "all"]


@runtime_checkable
class FeatureBlocks(Protocol):
    """A body whose representation has one declared block of columns per feature (``TwoBranchMLP``)."""

    feature_blocks: dict[str, slice]


@runtime_checkable
class TransferData(Protocol):
    """A datamodule with a held-out target domain for the transfer evaluation (``DomainBedDataModule``)."""

    test_domain: str | None

    def transfer_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """The (fit, evaluate) loaders of the target domain; batches start with ``(x, y)``."""
        ...
