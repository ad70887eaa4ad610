"""Median time per training step of SGD, SAM and LSAM, measured in one run, printed as ratios to SGD.

    python benchmarks/step_cost.py                 # CPU: ResNet-18 at 3x32x32, batch 64, and the toy model
    python benchmarks/step_cost.py --device cuda   # the same on a GPU (synchronised timings)

Every step runs through a real Trainer (manual optimization, Lightning's optimizer.step()), so the numbers include
what a user pays. The optimizers are interleaved in rounds so that drift in machine load hits all of them alike.
Expected (METHOD.md section 3): LSAM about one SGD step, SAM about two.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_sam import SAMClassifier
from lightning_sam.bodies import ResNetBody, TwoBranchMLP
from lightning_sam.datamodules import FeatureTensorDataset

OPTIMIZERS = ("sgd", "sam", "lsam")


class StepTimer(pl.Callback):
    """Wall time of every training step (batch start to batch end), synchronising CUDA around it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)


def _data(shape: tuple[int, ...], n: int) -> FeatureTensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return FeatureTensorDataset(x, y, torch.stack([y, y], dim=1))


def step_times(
    make_body, shape, batch_size: int, steps: int, optimizer: str, device: str, precision: str
) -> list[float]:
    torch.manual_seed(0)
    model = SAMClassifier(make_body(), optimizer=optimizer, rho=0.05, lr=0.01, lr_schedule="constant")
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    loader = DataLoader(_data(shape, batch_size * steps), batch_size=batch_size, shuffle=False)
    trainer.fit(model, loader)
    return timer.times[2:]  # the first steps pay for allocation and kernel selection


def measure(name: str, make_body, shape, batch_size: int, steps: int, rounds: int, device: str, precision: str) -> dict:
    times: dict[str, list[float]] = {o: [] for o in OPTIMIZERS}
    for _ in range(rounds):
        for optimizer in OPTIMIZERS:
            times[optimizer] += step_times(make_body, shape, batch_size, steps, optimizer, device, precision)
    medians = {o: statistics.median(t) for o, t in times.items()}
    return {"model": name, **{f"{o}_ms": 1e3 * m for o, m in medians.items()},
            "sam/sgd": medians["sam"] / medians["sgd"], "lsam/sgd": medians["lsam"] / medians["sgd"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=12, help="steps per fit (the first 2 are not timed)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three optimizers")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    rows = [
        measure("resnet18 3x32x32 b64", lambda: ResNetBody(depth=18), (3, 32, 32), 64, args.steps, args.rounds,
                args.device, args.precision),
        measure("toy two-branch MLP b128", TwoBranchMLP, (3,), 128, 4 * args.steps, args.rounds,
                args.device, args.precision),
    ]  # fmt: skip
    print(
        f"\ndevice={args.device} precision={args.precision} torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    print(f"{'model':<26}{'sgd ms':>9}{'sam ms':>9}{'lsam ms':>9}{'SAM/SGD':>9}{'LSAM/SGD':>10}")
    for r in rows:
        print(f"{r['model']:<26}{r['sgd_ms']:>9.2f}{r['sam_ms']:>9.2f}{r['lsam_ms']:>9.2f}"
              f"{r['sam/sgd']:>9.2f}{r['lsam/sgd']:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
