"""A context that puts a module in eval mode and restores every submodule's own train/eval flag afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Runs the block with ``module.eval()``; on exit each submodule gets back exactly the mode it had.

    Restoring per submodule (not ``module.train()``) keeps deliberately frozen layers, such as BatchNorm put in
    eval mode by the user, as they were.

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
        >>> _ = net[1].eval()
        >>> with evaluation_mode(net):
        ...     net.training
        False
        >>> net.training, net[0].training, net[1].training
        (True, True, False)
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
