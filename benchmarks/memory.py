"""Parameter and optimizer-state bytes held per process: DDP against the sharded body, printed as a Markdown table.

    python benchmarks/memory.py                 # ResNet-50 body, 2 CPU processes (gloo)
    python benchmarks/memory.py --devices 4     # more processes: about 1/N each under sharding

One SAM step of ``SAMClassifier(ResNetBody(depth=50))`` on tiny images, first under DDP (every process holds the
whole model and its momentum), then under ``ModelParallelStrategy`` (``SAMClassifier.configure_model`` shards the
body with FSDP2: each process holds its shard of the body and of its momentum; the 2048 x 2 head stays whole). The
bytes are counted from the tensors each process holds after the step (a DTensor counts its local shard), not
estimated. Expected: about half per process on 2 processes.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_sam import SAMClassifier
from lightning_sam.bodies import ResNetBody
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset

MIB = 2**20


def held_bytes(tensors: list[Tensor]) -> int:
    """Bytes of the tensors as this process holds them: a DTensor's local shard only."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


class HeldBytes(pl.Callback):
    """After training: every process's parameter and optimizer-state bytes, gathered on every rank."""

    def __init__(self) -> None:
        self.per_process: list[tuple[int, int]] = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        optimizer: Any = trainer.optimizers[0]
        state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor) and v.ndim > 0]
        mine = torch.tensor([held_bytes(list(pl_module.parameters())), held_bytes(state)], dtype=torch.float64)
        every = trainer.strategy.all_gather(mine).reshape(-1, 2)  # (processes, 2)
        self.per_process = [(int(p), int(s)) for p, s in every.tolist()]


def one_step(strategy: pl.strategies.Strategy, devices: int) -> tuple[list[tuple[int, int]], int]:
    torch.manual_seed(0)
    model = SAMClassifier(ResNetBody(depth=50), optimizer="sam", lr_schedule="constant")
    n = 2 * devices  # one batch of two images per process
    data = FeatureTensorDataset(torch.randn(n, 3, 32, 32), torch.zeros(n), torch.zeros(n, 1))
    held = HeldBytes()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[held],
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=2))
    whole = sum(p.numel() * p.element_size() for p in ResNetBody(depth=50).parameters())
    return held.per_process, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="CPU processes (gloo)")
    devices = parser.parse_args().devices
    rows = {
        "DDP": one_step(DDPStrategy(), devices),
        "sharded (ModelParallelStrategy, FSDP2)": one_step(
            ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1), devices
        ),
    }
    if pl.utilities.rank_zero_only.rank != 0:
        return
    ddp_total = max(p + s for p, s in rows["DDP"][0])
    print(
        f"\nResNet-50 body ({rows['DDP'][1] / MIB:.1f} MiB of parameters) and a 2-class head, SAM with SGD momentum, "
        f"{devices} CPU processes (gloo), torch {torch.__version__}, pytorch-lightning {pl.__version__}\n"
    )
    print("| strategy | process | parameters (MiB) | optimizer state (MiB) | total (MiB) | total / DDP |")
    print("|---|---|---|---|---|---|")
    for name, (per_process, _) in rows.items():
        for rank, (params, state) in enumerate(per_process):
            total = params + state
            print(
                f"| {name} | {rank} | {params / MIB:.1f} | {state / MIB:.1f} | {total / MIB:.1f} | "
                f"{total / ddp_total:.2f} |"
            )


if __name__ == "__main__":
    main()
