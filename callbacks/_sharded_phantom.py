"""The phantom measurement on a sharded model (FSDP2, Lightning's ``ModelParallelStrategy``): all ranks per batch.

A sharded model gathers its parameters in every forward, a collective: every rank must run every forward. So each
fixed batch is computed by all ranks together, each on a contiguous slice of it, and its phantom point is formed
from the batch's own gradient as on one process: the loss of each slice is scaled so that the average FSDP2 takes
over ranks is the batch mean, and the perturbation (:class:`~lightning_sam.SAM`, as in training) takes the norm over
all shards. Parameters and gradients are left as found; the real parameters come back bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_sam.callbacks._sharded_map import read_batches
from lightning_sam.functional.importance import PhantomPoint
from lightning_sam.functional.perturbation import PerturbationSpec, is_dtensor
from lightning_sam.sam import SAM
from lightning_sam.sharding import reshard


def batch_slices(
    trainer: pl.Trainer, batches: list[list[int]], batch_size: int, dataset: Dataset, collate_fn: Callable | None
) -> list[tuple[int, Tensor, Any]]:
    """``(batch index, example positions, batch)``: this rank's contiguous slice of every batch (possibly empty)."""
    world, rank = trainer.world_size, trainer.global_rank
    offsets = [torch.tensor_split(torch.arange(len(examples)), world)[rank] for examples in batches]
    collated = read_batches(
        dataset, [[examples[i] for i in offset.tolist()] for examples, offset in zip(batches, offsets, strict=True)],
        collate_fn,
    )  # fmt: skip
    positions = [b * batch_size + offset for b, offset in enumerate(offsets)]
    return list(zip(range(len(batches)), positions, collated, strict=True))


def sharded_phantom_point(
    model: nn.Module, x: Tensor, y: Tensor, spec: PerturbationSpec, names: list[str], head_weight: str
) -> PhantomPoint:
    """One batch, sliced across ranks, at ``θ`` and at its phantom point; every rank must call it for the batch.

    Returns this rank's rows of the real and phantom logits, and the whole phantom head weight ``W̃`` under
    ``head_weight`` (the only parameter gathered whole).
    """
    reshard(model)  # parameters as the optimizer holds them (an FSDP2 root keeps its gathered ones after forward)
    named = dict(model.named_parameters())
    params = [named[name] for name in names]
    saved = {p: p.grad for p in model.parameters()}  # backward writes every gradient: put each back afterwards
    for p in saved:
        p.grad = None
    try:
        count = torch.tensor(float(len(y)), device=y.device)
        torch.distributed.all_reduce(count)  # the batch's size
        with torch.enable_grad():
            real_logits = model(x)
            # FSDP2 averages gradients over ranks: a slice's sum times ranks / size averages to the batch mean
            loss = F.cross_entropy(real_logits, y, reduction="sum") * (torch.distributed.get_world_size() / count)
            loss.backward()
        # the optimizer's own ascent and restore; its base optimizer never steps
        ascent = SAM(torch.optim.SGD(params, lr=0.0), spec.rho, spec.adaptive, spec.eta)
        with ascent.phantom_point(), torch.no_grad():
            phantom_logits = model(x)
            reshard(model)  # drop the gathered phantom parameters before θ is restored
            weight = named[head_weight]
            w_tilde = weight.full_tensor() if is_dtensor(weight) else weight.detach().clone()  # type: ignore[attr-defined]
    finally:
        for p, grad in saved.items():
            p.grad = grad
    return PhantomPoint(real_logits.detach(), phantom_logits, {head_weight: w_tilde})
