"""Sharding a classifier's body across processes with FSDP2 (torch's ``fully_shard``): models larger than one device.

The policy :class:`~lightning_sam.SAMClassifier` applies under Lightning's ``ModelParallelStrategy``: the body's
parameters, gradients and optimizer state are split across the processes of the mesh, one FSDP2 unit per residual
stage of a :class:`~lightning_sam.bodies.ResNetBody` (``layer1`` .. ``layer4``; the stem joins the body's own unit)
and per child block of any other body (:func:`shard_units`), each gathered whole only while it computes. The linear
head stays whole on every process (:func:`replicate`): it is small (classes x features), and LSAM's head-only ascent
then needs no gather at all. The SAM step itself (:class:`~lightning_sam.SAM`) perturbs sharded and whole
parameters alike, with the norm of ``ε`` taken over all shards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_sam.bodies.resnet import ResNetBody
from lightning_sam.functional.perturbation import is_dtensor

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def shard_units(body: nn.Module) -> list[nn.Module]:
    """The submodules that become FSDP2 units of their own, gathered one at a time.

    A :class:`~lightning_sam.bodies.ResNetBody`'s four residual stages; otherwise the children that hold parameters,
    looking through a module with a single such child (``SmallCNN``'s ``features``: its layers).

    Example:
        >>> [type(unit).__name__ for unit in shard_units(nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU())))]
        ['Linear']
    """
    if isinstance(body, ResNetBody):
        return [getattr(body.resnet, stage) for stage in RESNET_STAGES]
    module = body
    while True:
        children = [child for child in module.children() if any(True for _ in child.parameters())]
        if len(children) != 1 or next(children[0].children(), None) is None:  # several, none, or one leaf layer
            return children
        module = children[0]


def shard_body(body: nn.Module, mesh: DeviceMesh) -> None:
    """Shards ``body`` over the 1-D ``mesh`` in place: each of :func:`shard_units`, then the rest as one unit.

    Its parameters become DTensors sharded on dim 0 (FSDP2); gradients are averaged over the mesh by each backward.
    """
    fully_shard = _fully_shard()
    for unit in shard_units(body):
        fully_shard(unit, mesh=mesh)
    fully_shard(body, mesh=mesh)


def replicate(module: nn.Module, mesh: DeviceMesh) -> None:
    """Keeps ``module``'s parameters whole on every process of ``mesh``, averaging their gradients after backward.

    Each parameter's gradient is all-reduced when backward has accumulated it (a post-accumulate-grad hook), as
    DDP does: every process then holds the same gradient, so the same update keeps the copies equal. Gradients taken
    with ``torch.autograd.grad`` do not pass through the hook.
    """
    group, size = mesh.get_group(), mesh.size()

    def average(param: Tensor) -> None:
        if param.grad is not None:
            torch.distributed.all_reduce(param.grad, group=group)
            param.grad.div_(size)

    for param in module.parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(average)


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (sharded by FSDP2 or another DTensor API)."""
    return any(is_dtensor(p) for p in module.parameters())


def reshard(module: nn.Module) -> None:
    """Frees the gathered parameters of every FSDP2 unit in ``module``, leaving only the shards registered.

    An FSDP2 root keeps its parameters gathered after its forward (for the backward); code that reads or moves the
    shards in place (the phantom point) reshards first, or the next forward would reuse the stale gathered copy.
    """
    fsdp_module = _fsdp_module()
    for unit in module.modules():
        if isinstance(unit, fsdp_module):
            unit.reshard()


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh to shard over: Lightning ``ModelParallelStrategy``'s ``data_parallel`` dimension.

    Raises:
        ValueError: the mesh has a tensor-parallel dimension of size > 1 (no tensor-parallel plan is applied here:
            its processes would all read the same data).
    """
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"the device mesh has a tensor-parallel dimension of size {mesh['tensor_parallel'].size()}, but "
            "SAMClassifier shards its body over data-parallel processes only (FSDP2, no tensor parallelism): use "
            "ModelParallelStrategy(data_parallel_size=<number of processes>, tensor_parallel_size=1) "
            "(train.py: --trainer.strategy ModelParallelStrategy sets both)"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def _fully_shard() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard  # torch 2.4, 2.5
    return fully_shard


def _fsdp_module() -> Any:
    try:
        from torch.distributed.fsdp import FSDPModule  # torch >= 2.6
    except ImportError:
        from torch.distributed._composable.fsdp import FSDPModule  # torch 2.4, 2.5
    return FSDPModule
