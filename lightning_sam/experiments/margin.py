"""Each feature's share of a two-class margin, and the median importance weight per bin of those shares.

For a two-class head ``z = W Φ + b`` and signed label ``s = 2y − 1``, the margin ``s (z_1 − z_0)`` splits over the
representation's feature blocks: feature ``k`` contributes ``s (W_1 − W_0)[k] · Φ[k]``. The paper's Figure 5 bins
the training examples by the easy and the hard feature's contributions and shows the median importance weight in
each bin: SGD's weight is concentrated where the easy contribution is small; SAM's phantom weights are spread more
evenly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def margin_contribution(representation: Tensor, y: Tensor, weight: Tensor, block: slice) -> Tensor:
    """``(N,)`` contribution of the representation columns ``block`` to the signed two-class margin.

    Example:
        >>> phi = torch.tensor([[1.0, 2.0], [1.0, -2.0]])
        >>> w = torch.tensor([[0.0, 0.0], [1.0, 0.5]])
        >>> margin_contribution(phi, torch.tensor([1, 0]), w, slice(1, 2)).tolist()
        [1.0, 1.0]
    """
    if weight.ndim != 2 or weight.shape[0] != 2:
        raise ValueError(f"need a two-class (2, D) head weight, got {tuple(weight.shape)}")
    signed = 2.0 * y.to(representation.dtype) - 1.0
    direction = weight[1, block] - weight[0, block]
    return signed * (representation[:, block] @ direction)


def binned_median(x: Tensor, y: Tensor, values: Tensor, x_edges: Tensor, y_edges: Tensor) -> Tensor:
    """``(len(y_edges) − 1, len(x_edges) − 1)`` median of ``values`` per 2-D bin of ``(x, y)``; NaN where empty.

    Points outside the edges are clipped into the outermost bins; the median of an even count is the lower middle
    value (``torch.median``).

    Example:
        >>> edges = torch.tensor([0.0, 1.0, 2.0])
        >>> binned_median(torch.tensor([0.5, 0.5, 1.5]), torch.tensor([0.5, 0.5, 0.5]),
        ...               torch.tensor([1.0, 3.0, 5.0]), edges, edges).tolist()
        [[1.0, 5.0], [nan, nan]]
    """
    nx, ny = len(x_edges) - 1, len(y_edges) - 1
    ix = (torch.bucketize(x, x_edges, right=True) - 1).clamp(0, nx - 1)
    iy = (torch.bucketize(y, y_edges, right=True) - 1).clamp(0, ny - 1)
    out = torch.full((ny, nx), float("nan"))
    for j in range(ny):
        for i in range(nx):
            inside = values[(ix == i) & (iy == j)]
            if inside.numel():
                out[j, i] = inside.float().median()
    return out
