"""The batch contract shared by every datamodule, the LightningModule and the callbacks.

Every dataset in this project yields :class:`FeatureBatch` examples; the default collate function stacks them
into a :class:`FeatureBatch` of tensors, which Lightning moves between devices as it does any tuple.

A ``FeatureBatch`` *is* a tuple whose first two items are the input and the label, so code written for plain
``(x, y)`` batches (``x, y = batch[0], batch[1]``) keeps working on our data.

Fields:
    x: the model input, ``(B, ...)``.
    y: the class label, ``(B,)`` long.
    features: ``(B, F)`` long, the label of every annotated feature, in the order of the datamodule's
        ``feature_names`` (for example ``("easy", "hard")`` on the toy, ``("hair", "gender")`` on CelebA).
    group: ``(B,)`` long group id (docs/method.md section 7; ``2 * y + spurious`` for the two-feature datasets),
        ``-1`` where a dataset defines no groups.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

NO_GROUP = -1


class FeatureBatch(NamedTuple):
    """One example or one collated batch: input, label, per-feature labels and group id.

    Example:
        >>> import torch
        >>> from torch.utils.data import default_collate
        >>> ex = FeatureBatch(torch.zeros(3), torch.tensor(1), torch.tensor([1, 0]), torch.tensor(2))
        >>> batch = default_collate([ex, ex])
        >>> type(batch).__name__, tuple(batch.x.shape), batch.features.tolist()
        ('FeatureBatch', (2, 3), [[1, 0], [1, 0]])
    """

    x: Tensor
    y: Tensor
    features: Tensor
    group: Tensor
