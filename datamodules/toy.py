"""The toy with an easy and a hard feature (docs/method.md section 8, our reconstruction of the paper's Figure 1).

Each example is ``x = [x_easy, x_hard_1, x_hard_2]``: ``x_easy = s μ + σ_e N(0, 1)`` (``s = 2y - 1``) is linearly
separable with a margin, ``x_hard`` lies on one of two interleaved spirals whose tightness (``turns``) sets how hard
it is to learn. In training, validation and test data both features carry the label; in the probe splits the
features are drawn from independent labels (the label ``y`` is the hard feature's), so a probe for one feature
cannot cheat through the other.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from typing_extensions import override

from lightning_sam.datamodules.feature_datamodule import FeatureDataModule
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset


def sample_toy(
    easy_label: Tensor,
    hard_label: Tensor,
    turns: float = 1.0,
    mu: float = 1.0,
    sigma_easy: float = 0.1,
    sigma_hard: float = 0.02,
    generator: torch.Generator | None = None,
    easy_spread: float = 0.0,
) -> Tensor:
    """``(N, 3)`` toy inputs whose easy and hard features encode the given binary labels.

    With ``easy_spread = a > 0`` the easy feature's class mean magnitude varies over examples,
    ``x_easy = s μ (1 − a U(0, 1)) + σ_e N(0, 1)``, so that examples have different easy margins (with ``σ_e = 0``
    they are spread uniformly over ``[(1 − a) μ, μ]``, still linearly separable for ``a < 1``). The extra uniform
    draw comes after all the others: the same generator gives the same hard feature and easy noise as ``a = 0``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = sample_toy(torch.tensor([0, 1]), torch.tensor([1, 1]), sigma_easy=0.0, generator=g)
        >>> x[:, 0].tolist()
        [-1.0, 1.0]
        >>> x = sample_toy(torch.zeros(1000).long(), torch.zeros(1000).long(), sigma_easy=0.0, easy_spread=0.9)
        >>> round(x[:, 0].min().item(), 1), round(x[:, 0].max().item(), 1)
        (-1.0, -0.1)
    """
    n = len(easy_label)
    signed = 2.0 * easy_label.float() - 1.0
    x_easy = signed * mu + sigma_easy * torch.randn(n, generator=generator)
    t = torch.rand(n, generator=generator)
    angle = 2 * math.pi * turns * t + math.pi * hard_label.float()
    x_hard = t[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x_hard = x_hard + sigma_hard * torch.randn(n, 2, generator=generator)
    if easy_spread > 0:
        x_easy = x_easy - signed * mu * easy_spread * torch.rand(n, generator=generator)
    return torch.cat([x_easy[:, None], x_hard], dim=1)


class ToyDataModule(FeatureDataModule):
    """Easy (linear) and hard (spiral) features of a binary label; generated, nothing to download.

    Args:
        root: unused (the data is generated); kept for the shared constructor shape.
        batch_size: examples per training batch.
        num_workers: DataLoader workers.
        seed: seeds every split.
        n_train: training examples.
        n_val: validation examples (also the size of the test split).
        n_probe: examples in each of the probe-fit and probe-evaluate splits.
        turns: spiral turns, the hard feature's complexity.
        mu: the easy feature's class mean magnitude.
        sigma_easy: the easy feature's noise.
        sigma_hard: the hard feature's noise.
        easy_spread: spread of the easy feature's per-example margin (see :func:`sample_toy`; 0: none).
        evaluation_batch_size: validation, test and probe batches hold ``max(batch_size, evaluation_batch_size)``
            examples (three numbers each: reading a split in a few batches is cheaper than in many).
    """

    num_classes = 2
    feature_names = ("easy", "hard")
    num_groups = 4  # 2 y + easy label
    reads_root = False

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        n_train: int = 2000,
        n_val: int = 1000,
        n_probe: int = 2000,
        turns: float = 1.0,
        mu: float = 1.0,
        sigma_easy: float = 0.1,
        sigma_hard: float = 0.02,
        easy_spread: float = 0.0,
        evaluation_batch_size: int = 1024,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed)
        if isinstance(evaluation_batch_size, bool) or evaluation_batch_size < 0:
            raise ValueError(
                f"{type(self).__name__}: evaluation_batch_size must be >= 0 (0: batch_size), "
                f"got {evaluation_batch_size!r}"
            )
        self.evaluation_batch_size = evaluation_batch_size
        for name, n in (("n_train", n_train), ("n_val", n_val), ("n_probe", n_probe)):
            if n < 2:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 2, got {n}")
        if not turns > 0:
            raise ValueError(f"{type(self).__name__}: turns must be > 0, got {turns}")
        if sigma_easy < 0 or sigma_hard < 0:
            raise ValueError(
                f"{type(self).__name__}: sigma_easy and sigma_hard must be >= 0, got {sigma_easy}, {sigma_hard}"
            )
        self.n_train, self.n_val, self.n_probe = n_train, n_val, n_probe
        if not 0 <= easy_spread < 1:
            raise ValueError(
                f"{type(self).__name__}: easy_spread must be in [0, 1) (1 would let easy margins reach 0), "
                f"got {easy_spread}"
            )
        self.turns, self.mu, self.sigma_easy, self.sigma_hard = turns, mu, sigma_easy, sigma_hard
        self.easy_spread = easy_spread

    def _split(self, n: int, generator: torch.Generator, correlated: bool) -> FeatureTensorDataset:
        y = torch.randint(0, 2, (n,), generator=generator)
        easy = y if correlated else torch.randint(0, 2, (n,), generator=generator)
        x = sample_toy(easy, y, self.turns, self.mu, self.sigma_easy, self.sigma_hard, generator, self.easy_spread)
        return FeatureTensorDataset(x, y, torch.stack([easy, y], dim=1), 2 * y + easy)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        # one generator, fixed order of splits: the same seed gives the same data on every process
        generator = torch.Generator().manual_seed(self.seed)
        self.train_dataset = self._split(self.n_train, generator, correlated=True)
        self.val_dataset = self._split(self.n_val, generator, correlated=True)
        self.test_dataset = self._split(self.n_val, generator, correlated=True)
        self.probe_train_dataset = self._split(self.n_probe, generator, correlated=False)
        self.probe_test_dataset = self._split(self.n_probe, generator, correlated=False)
