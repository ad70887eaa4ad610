"""Fits a module that shards itself with ``fully_shard`` under SharpnessAware on two CPU processes and saves it whole.

test_sharpness_aware.py runs ``python -m tests.callbacks.sharded_sharpness_aware_fit <out>`` from the repository root,
once, and compares ``<run>.pt`` (the whole parameters after ``STEPS`` steps, for each of ``RUNS``) with one process
training the same module unsharded on the same global batches. The module shards as Lightning documents it: in
``configure_model``, over ``ModelParallelStrategy``'s data-parallel mesh, the first layer as a unit of its own and
the head with the root (whose gathered parameters stay registered from its forward to its backward); with
``replicated_head`` the head stays whole on every process (its gradient averaged by
:func:`lightning_sam.sharding.replicate`) and the first layer is the root.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from lightning_sam.callbacks import SharpnessAware
from lightning_sam.sharding import is_sharded, replicate
from tests import tiny
from tests.callbacks.ddp_sharpness_aware_fit import PER_DEVICE_BATCH, toy_data

STEPS = 3
# name -> (SharpnessAware's arguments, whether the module keeps its head whole)
RUNS = {
    "sam": ({"rho": 0.5}, False),
    "asam": ({"rho": 0.5, "adaptive": True}, False),
    "head-replicated": ({"rho": 0.5, "scope": "head"}, True),
}


class SelfSharding(pl.LightningModule):
    """An MLP with automatic optimization and SGD with momentum that shards itself; knows nothing of SAM."""

    def __init__(self, replicated_head: bool = False) -> None:
        super().__init__()
        self.replicated_head = replicated_head
        self.model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))

    def configure_model(self) -> None:
        if self.device_mesh is None or is_sharded(self):
            return
        mesh = self.device_mesh["data_parallel"]
        fully_shard(self.model[0], mesh=mesh)
        if self.replicated_head:
            replicate(self.model[2], mesh)
        else:
            fully_shard(self.model, mesh=mesh)  # the root, with the head: gathered from its forward to its backward

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def make_model(run: str) -> SelfSharding:
    torch.manual_seed(0)
    return SelfSharding(replicated_head=RUNS[run][1])


def trainer(run: str, devices: int) -> pl.Trainer:
    """Two processes: ModelParallelStrategy, data-parallel over both; one: a plain CPU Trainer."""
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if devices > 1 else "auto"
    return tiny.trainer(
        None,
        max_epochs=None,
        max_steps=STEPS,
        devices=devices,
        strategy=strategy,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[SharpnessAware(**RUNS[run][0])],
    )


def main(out: Path) -> None:
    for run in RUNS:
        model = make_model(run)
        fit = trainer(run, devices=2)
        fit.fit(model, tiny.ShardedData(toy_data(), PER_DEVICE_BATCH))
        assert is_sharded(model)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        whole = get_model_state_dict(model, options=options)  # a collective: every rank takes part
        if fit.is_global_zero:
            torch.save(whole, out / f"{run}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
