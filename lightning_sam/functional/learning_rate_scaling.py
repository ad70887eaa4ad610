"""The head's weight on each feature, at the real and the phantom point (METHOD.md section 5).

With an orthonormal basis ``U_k`` (``(D, r)``) of feature ``k``'s directions in representation space, the head
``W`` (``(K, D)``) weighs the feature by ``v_k = ‖W U_k‖_F`` (for one direction ``u_k``: ``‖W u_k‖``), and the
body's update for that feature is scaled by ``v_k`` under SGD and by ``ṽ_k = ‖W̃ U_k‖_F`` under SAM. The directions
come from the model's declared blocks of representation columns (the toy) or from a fitted probe's weights.
"""

from __future__ import annotations

import torch
from torch import Tensor


def feature_weight(weight: Tensor, directions: Tensor) -> Tensor:
    """``‖W U‖_F``: how strongly a ``(K, D)`` head reads the feature spanned by the ``(D, r)`` columns of ``U``.

    Example:
        >>> feature_weight(torch.tensor([[3.0, 0.0], [0.0, -4.0]]), torch.tensor([[0.0], [1.0]])).item()
        4.0
    """
    if weight.ndim != 2 or directions.ndim != 2 or weight.shape[1] != directions.shape[0]:
        shapes = f"{tuple(weight.shape)} and {tuple(directions.shape)}"
        raise ValueError(f"need a (K, D) weight and (D, r) directions, got {shapes}")
    return torch.linalg.matrix_norm(weight @ directions.to(weight.dtype))


def block_directions(block: slice, dim: int) -> Tensor:
    """``(dim, r)`` orthonormal basis of the representation columns ``block`` (a feature's declared block).

    Example:
        >>> block_directions(slice(1, 2), 3).flatten().tolist()
        [0.0, 1.0, 0.0]
    """
    columns = range(dim)[block]
    if len(columns) == 0:
        raise ValueError(f"block {block} selects no column of a {dim}-dimensional representation")
    return torch.eye(dim)[:, list(columns)]


def probe_directions(probe_weight: Tensor, rtol: float = 1e-6) -> Tensor:
    """``(D, r)`` orthonormal basis of the directions a ``(C, D)`` probe separates its classes along.

    Softmax ignores a shift shared by all rows, so the rows are centred first: a two-class probe gives the single
    unit direction ``(w_1 − w_0) / ‖w_1 − w_0‖``, a ``C``-class probe up to ``C − 1`` directions. Pass weights
    that act on the raw representation (:meth:`LinearProbe.representation_weight`).

    Example:
        >>> probe_directions(torch.tensor([[1.0, 0.0], [3.0, 0.0]])).abs().flatten().tolist()
        [1.0, 0.0]
    """
    centred = probe_weight - probe_weight.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    rank = int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    if rank == 0:
        raise ValueError("the probe's weights are all equal: it separates nothing, so it gives no feature direction")
    return vh[:rank].T.to(probe_weight.dtype).contiguous()
