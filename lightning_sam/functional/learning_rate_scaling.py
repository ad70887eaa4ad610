"""The head's weight on each feature, at the real and the phantom point (docs/method.md section 5).

Softmax ignores a shift shared by all head rows and the cross-entropy gradient ``p − e_y`` sums to zero, so only the
row-centred head ``W_c = W − mean_rows(W)`` acts on the body. With an orthonormal basis ``U_k`` (``(D, r)``) of
feature ``k``'s directions in representation space, the body's gradient along ``U_k`` is exactly
``a_kᵀ (p − e_y)`` with ``a_k = W_c U_k``: the feature's learning rate is ``v_k = ‖a_k‖``, and SAM's is
``ṽ_k = ‖ã_k‖`` with ``ã_k = W̃_c U_k``. The phantom *flips* the feature when ``⟨a_k, ã_k⟩ ≤ 0`` (an unsigned norm would
read a reversed feature as a larger weight). The gain is ``r_k = ṽ_k / v_k``, the relative gain
``ℓ = log(r_hard / r_easy)``, the log of the paper's ``(ṽ_hard/ṽ_easy)/(v_hard/v_easy)`` (its Figure 2B).

Every function takes heads with leading batch dimensions (``(..., K, D)``), so many phantom heads (one per batch,
or per seed) are measured in one call. The directions come from the model's declared blocks of representation
columns (the toy) or from fitted probes' weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class FeatureScaling(NamedTuple):
    """One feature's learning rate at the real and the phantom head (each ``(...)``, over the heads' batch dims)."""

    v: Tensor  # ‖a_k‖
    v_phantom: Tensor  # ‖ã_k‖
    flipped: Tensor  # bool, ⟨a_k, ã_k⟩ <= 0

    @property
    def gain(self) -> Tensor:
        """``r_k = ṽ_k / v_k``."""
        return self.v_phantom / self.v


def centred_head(weight: Tensor) -> Tensor:
    """``W_c = W − mean_rows(W)``: the part of a ``(..., K, D)`` head that the logits' softmax and the gradient see.

    Example:
        >>> centred_head(torch.tensor([[3.0, 1.0], [1.0, 1.0]])).tolist()
        [[1.0, 0.0], [-1.0, 0.0]]
    """
    return weight - weight.mean(dim=-2, keepdim=True)


def feature_vector(weight: Tensor, directions: Tensor) -> Tensor:
    """``a = W_c U``, ``(..., K, r)``: the centred head's read-out of the feature spanned by the columns of ``U``.

    Example:
        >>> feature_vector(torch.tensor([[3.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0], [0.0]])).flatten().tolist()
        [1.0, -1.0]
    """
    if weight.ndim < 2 or directions.ndim != 2 or weight.shape[-1] != directions.shape[0]:
        shapes = f"{tuple(weight.shape)} and {tuple(directions.shape)}"
        raise ValueError(f"need a (..., K, D) weight and (D, r) directions, got {shapes}")
    return centred_head(weight) @ directions.to(weight.dtype)


def feature_weight(weight: Tensor, directions: Tensor) -> Tensor:
    """``v = ‖W_c U‖_F``: the learning rate the head gives the body along the feature spanned by ``U``.

    A shift shared by all rows (here ``[1, −2]``) changes nothing:

    Example:
        >>> u = torch.tensor([[0.0], [1.0]])
        >>> feature_weight(torch.tensor([[1.0, 1.0], [1.0, -3.0]]), u).item()
        2.8284270763397217
        >>> feature_weight(torch.tensor([[2.0, -1.0], [2.0, -5.0]]), u).item()
        2.8284270763397217
    """
    return torch.linalg.vector_norm(feature_vector(weight, directions), dim=(-2, -1))


def feature_contrast(weight: Tensor, directions: Tensor) -> Tensor:
    """The signed two-class contrast ``d = (W_1 − W_0) U``, ``(..., r)``: positive when the feature votes for class 1.

    For two classes ``a = (d / 2) [−1, 1]``, so ``v = |d| / √2`` for one direction: the sign is what ``v`` loses.

    Example:
        >>> feature_contrast(torch.tensor([[0.0, 1.0], [0.0, -1.0]]), torch.tensor([[0.0], [1.0]])).tolist()
        [-2.0]
    """
    if weight.shape[-2] != 2:
        raise ValueError(f"the signed contrast needs a two-class head, got {weight.shape[-2]} classes")
    a = feature_vector(weight, directions)
    return a[..., 1, :] - a[..., 0, :]


def feature_scaling(weight: Tensor, phantom_weight: Tensor, directions: Tensor) -> FeatureScaling:
    """``v``, ``ṽ`` and the flip of one feature between a real and a phantom head (broadcast over batch dims).

    Example:
        >>> u = torch.tensor([[1.0], [0.0]])
        >>> w = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
        >>> s = feature_scaling(w, torch.tensor([[-0.5, 0.0], [0.5, 0.0]]), u)
        >>> s.gain.item(), s.flipped.item()
        (0.5, False)
        >>> feature_scaling(w, torch.tensor([[0.5, 0.0], [-0.5, 0.0]]), u).flipped.item()  # same norm, reversed
        True
    """
    a, a_tilde = feature_vector(weight, directions), feature_vector(phantom_weight, directions)
    norm = torch.linalg.vector_norm
    return FeatureScaling(norm(a, dim=(-2, -1)), norm(a_tilde, dim=(-2, -1)), (a * a_tilde).sum(dim=(-2, -1)) <= 0)


def log_relative_gain(easy: FeatureScaling, hard: FeatureScaling) -> Tensor:
    """``ℓ = log(r_hard / r_easy)``: ``> 0`` when the phantom head speeds the hard feature relative to the easy one.

    Example:
        >>> one = torch.tensor(1.0)
        >>> easy = FeatureScaling(one, torch.tensor(0.5), torch.tensor(False))
        >>> hard = FeatureScaling(one, torch.tensor(1.0), torch.tensor(False))
        >>> round(log_relative_gain(easy, hard).item(), 4)  # log 2
        0.6931
    """
    return torch.log(hard.v_phantom) - torch.log(hard.v) - torch.log(easy.v_phantom) + torch.log(easy.v)


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
        >>> probe_directions(torch.tensor([[1.0, 0.0], [3.0, 0.0]])).flatten().tolist()  # towards class 1
        [1.0, 0.0]
        >>> probe_directions(torch.tensor([[3.0, 0.0], [1.0, 0.0]]))[0].item()
        -1.0
    """
    centred = probe_weight - probe_weight.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    rank = int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    if rank == 0:
        raise ValueError("the probe's weights are all equal: it separates nothing, so it gives no feature direction")
    basis = vh[:rank].T  # (D, r), each column's sign left to the SVD solver
    # orient every direction towards the last class, so that signed read-outs (the two-class contrast) mean the
    # same on every device and solver: for two classes, u = (w_1 − w_0) / ‖w_1 − w_0‖
    signs = torch.where(centred[-1].double() @ basis < 0, -1.0, 1.0).to(basis.dtype)
    return (basis * signs).to(probe_weight.dtype).contiguous()
