"""Seeded group-balanced subsampling: the decorrelated probe splits of CelebA and Waterbirds (docs/method.md section 6).

With ``g = 2 * y + spurious``, equal counts in all four groups make the label and the spurious attribute
independent, so a linear probe for either feature cannot cheat through the other.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_balanced_indices(group: Tensor, num_groups: int, seed: int, per_group: int | None = None) -> Tensor:
    """Indices of a seeded subsample with the same number of examples from every group.

    Args:
        group: ``(N,)`` group id of every example, in ``[0, num_groups)``.
        num_groups: number of groups; every one of them must occur.
        seed: seeds the choice of examples.
        per_group: examples to take from each group; default the size of the smallest group.

    Returns:
        ``(num_groups * per_group,)`` sorted long indices into ``group``.

    Raises:
        ValueError: a group is empty or smaller than ``per_group``.

    Example:
        >>> group = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
        >>> idx = group_balanced_indices(group, num_groups=4, seed=0)
        >>> torch.bincount(group[idx], minlength=4).tolist()
        [1, 1, 1, 1]
    """
    counts = torch.bincount(group, minlength=num_groups)[:num_groups]
    if int(counts.min()) == 0:
        missing = [g for g in range(num_groups) if counts[g] == 0]
        raise ValueError(f"cannot balance groups: group(s) {missing} have no examples (counts {counts.tolist()})")
    smallest = int(counts.min())
    if per_group is None:
        per_group = smallest
    if per_group < 1 or per_group > smallest:
        raise ValueError(f"per_group must be in [1, {smallest}] (the smallest group), got {per_group}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for g in range(num_groups):
        members = torch.nonzero(group == g).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_group]])
    return torch.cat(chosen).sort().values
