"""Fits SAMClassifier with its body sharded (``ModelParallelStrategy``, FSDP2) on two CPU processes (gloo).

test_sharded.py runs ``python -m tests.lightning_sam.sharded_fit <out>`` from the repository root, once, and compares
what it saves with one process:

- ``<optimizer>.pt``: the whole parameters after ``STEPS`` steps of SAM, ASAM and LSAM (each rank reads its shard of
  every global batch through a non-shuffling DistributedSampler);
- ``resumed.pt`` and ``uninterrupted.pt``: parameters and momentum after two epochs, stopped after one and resumed
  from the sharded checkpoint, or not stopped;
- ``exception_rank<r>.pt``: this rank's shards and head before a step whose phantom forward raised, and after;
- ``sharded_head.pt``: the phantom head of SAM perturbing only a head that is itself sharded (FSDP2);
- ``importance_<optimizer>.pt``: ImportanceWeights' measurements at the phantom points of SAM and ASAM, which move
  the shards of the body (the last phantom batch, of one example, leaves one rank an empty slice);
- ``stem_names_rank<r>.pt``: the parameters a phantom measurement moves, taken after a no-grad forward (as after
  validation), of a body with a parameter of its own (in the FSDP2 root, like a ResNet's stem).
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from lightning_sam import SAM, SAMClassifier
from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.callbacks import ImportanceWeights
from lightning_sam.callbacks._phantom import _CACHE, PhantomSampling, phantom_batches
from tests import tiny
from tests.lightning_sam import ddp_fit

OPTIMIZERS = ("sam", "asam", "lsam")
STEPS, EPOCH_STEPS = 3, 4  # 64 examples in global batches of 16
WHOLE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def trainer(devices: int, **kwargs) -> pl.Trainer:
    """Two processes: the body sharded over both (data-parallel FSDP2); one: a plain CPU Trainer."""
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if devices > 1 else "auto"
    options = dict(max_epochs=None, devices=devices, strategy=strategy, use_distributed_sampler=False)
    return tiny.trainer(None, limit_val_batches=0, **{**options, **kwargs})


class PhantomFailure(SAMClassifier):
    """Raises in the forward at the phantom point of its first step, after recording the real point."""

    real: dict[str, torch.Tensor]

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.real = {name: _local(p).clone() for name, p in self.named_parameters()}

    def forward(self, x):
        if self.optimizers().optimizer.at_phantom_point:
            raise RuntimeError("forced failure at the phantom point")
        return super().forward(x)


def main(out: Path) -> None:
    data = tiny.ShardedData(ddp_fit.toy_data(), ddp_fit.PER_DEVICE_BATCH)
    for optimizer in OPTIMIZERS:
        model = ddp_fit.make_model(optimizer, "global")
        fit = trainer(2, max_steps=STEPS)
        fit.fit(model, data)
        whole = get_model_state_dict(model, options=WHOLE)  # a collective: every rank takes part
        if fit.is_global_zero:
            torch.save(whole, out / f"{optimizer}.pt")

    for optimizer in ("sam", "asam"):
        importance, model = importance_weights(), ddp_fit.make_model(optimizer, "global")
        fit = trainer(2, max_epochs=1, callbacks=[importance])
        fit.fit(model, data)
        whole = get_model_state_dict(model, options=WHOLE)  # measured at the end: must have left θ as it was
        if fit.is_global_zero:
            torch.save({"history": importance.history, "params": whole}, out / f"importance_{optimizer}.pt")

    # stopped after one epoch and resumed from its sharded checkpoint (a folder), or trained on
    for name, epochs in (("first", 1), ("uninterrupted", 2), ("resumed", 2)):
        model = ddp_fit.make_model("sam", "global")
        fit = trainer(2, max_epochs=epochs, max_steps=-1)
        fit.fit(model, data, ckpt_path=out / "epoch1.ckpt" if name == "resumed" else None, weights_only=True)
        if name == "first":
            fit.save_checkpoint(out / "epoch1.ckpt")
            continue
        whole = get_model_state_dict(model, options=WHOLE)
        momentum = get_optimizer_state_dict(model, fit.optimizers[0], options=WHOLE).get(
            "state"
        )  # whole on rank zero only
        if fit.is_global_zero:
            torch.save({"params": whole, "momentum": momentum, "step": fit.global_step}, out / f"{name}.pt")

    torch.manual_seed(0)
    model = PhantomFailure(ddp_fit.make_model("sam", "global").body, optimizer="sam", rho=0.5, lr=0.1)
    fit = trainer(2, max_steps=STEPS)
    raised = ""
    try:
        fit.fit(model, data)
    except RuntimeError as error:
        raised = str(error)
    after = {name: _local(p).clone() for name, p in model.named_parameters()}
    sharded = {name for name, p in model.named_parameters() if _local(p) is not p}
    result = {"before": model.real, "after": after, "sharded": sorted(sharded), "raised": raised}
    torch.save(result, out / f"exception_rank{fit.global_rank}.pt")

    sharded_head(out, fit.global_rank)
    stem_names(out, data)


def importance_weights() -> ImportanceWeights:
    """Phantom batches of 16 (the global batch) from 49 examples: three whole ones and one of a single example."""
    return ImportanceWeights(num_examples=49, lorenz_figure=False)


def sharded_head(out: Path, rank: int) -> None:
    """LSAM's ascent with the head sharded too: each rank holds one row of the (2, 16) head weight."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
    mesh = init_device_mesh("cpu", (2,))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    fully_shard(model, mesh=mesh)
    head = model[2].weight
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, perturbed_params=[head])
    data = ddp_fit.toy_data(16)
    shard = slice(8 * rank, 8 * rank + 8)  # each rank its half of the batch: FSDP2 averages the two gradients
    F.cross_entropy(model(data.x[shard]), data.y[shard]).backward()
    with sam.phantom_point() as ascent:
        phantom = head.full_tensor()
    real = head.full_tensor()
    if rank == 0:
        torch.save({"phantom": phantom, "real": real, "norm": ascent.perturbation_norm}, out / "sharded_head.pt")


class StemBody(nn.Module):
    """TwoBranchMLP behind a parameter of the body's own: it stays in the FSDP2 root, as a ResNet's stem does."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.blocks = TwoBranchMLP(hidden=16)
        self.out_features = self.blocks.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x * self.scale)


def stem_names(out: Path, data: tiny.ShardedData) -> None:
    """The names a phantom measurement perturbs after a no-grad forward, which leaves the root's parameters gathered."""
    torch.manual_seed(0)
    model = SAMClassifier(StemBody(), optimizer="sam", rho=0.5, lr=0.1, lr_schedule="constant")
    fit = trainer(2, max_steps=1)
    fit.fit(model, data)
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        model(batch[0])  # as validation does before the epoch-end measurements
    sampling = PhantomSampling(num_examples=16)
    phantom_batches(fit, model, model.perturbation_spec, sampling, None, lambda b: b[0], lambda b: b[1], data.dataset)
    key = _CACHE[model][0]
    names = next(part for part in key if isinstance(part, tuple) and part and isinstance(part[0], str))
    torch.save({"names": list(names), "all": [n for n, _ in model.named_parameters()]},
               out / f"stem_names_rank{fit.global_rank}.pt")  # fmt: skip


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


if __name__ == "__main__":
    main(Path(sys.argv[1]))
