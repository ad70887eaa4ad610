"""Keeps BatchNorm running statistics out of SAM's perturbed forward pass (docs/method.md section 3).

Inside the context every BatchNorm layer still normalises with the batch statistics (as in training), but
``running_mean``, ``running_var`` and ``num_batches_tracked`` stay exactly as they were: only the pass at the real
parameters may update them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Stops every BatchNorm layer in ``module`` from updating its running statistics.

    Example:
        >>> import torch
        >>> bn = nn.BatchNorm1d(3)
        >>> with frozen_batchnorm_stats(bn):
        ...     _ = bn(torch.randn(8, 3))
        >>> bn.num_batches_tracked.item(), bn.running_mean.abs().sum().item()
        (0, 0.0)
    """
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in layers:
        # with track_running_stats off, a training-mode BN uses batch statistics and touches no buffer
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True
