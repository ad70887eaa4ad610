"""Median time per training step of SGD, SAM and LSAM, measured in one run, printed as ratios to SGD.

    python benchmarks/step_cost.py                 # CPU: ResNet-18 at 3x32x32, batch 64, and the toy model
    python benchmarks/step_cost.py --device cuda   # the same on a GPU (synchronised timings)
    python benchmarks/step_cost.py --callback-only # only the SharpnessAware table (ResNet-18)

Every step runs through a real Trainer (manual optimization, Lightning's optimizer.step()), so the numbers include
what a user pays. The optimizers are interleaved in rounds so that drift in machine load hits all of them alike.
Expected (docs/method.md section 3): LSAM about one SGD step, SAM about two.

The second table times the SharpnessAware callback on a plain automatic-optimization module (same body, head and
SGD): its step against the same module without the callback, with ``every_n_steps=5`` (mean over a whole number of
5-step periods, since the median would be a plain step), and against SAMClassifier's SAM step. Expected: about 2,
at most 1.3, and within 5 %. On the CPU it counts this process's CPU time, not wall time, so that other jobs on a
shared machine do not decide the ratios; there, run with ``OMP_WAIT_POLICY=PASSIVE``, or threads spinning while
they wait for a core count as busy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_sam import SAMClassifier
from lightning_sam.bodies import ResNetBody, TwoBranchMLP
from lightning_sam.callbacks import SharpnessAware
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset

OPTIMIZERS = ("sgd", "sam", "lsam")


class StepTimer(pl.Callback):
    """Wall time of every training step (batch start to batch end), synchronising CUDA around it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)


def _data(shape: tuple[int, ...], n: int) -> FeatureTensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return FeatureTensorDataset(x, y, torch.stack([y, y], dim=1))


def timed_fit(model: pl.LightningModule, timer: StepTimer, callbacks: list, shape, batch_size: int, steps: int,
              device: str, precision: str) -> list[float]:  # fmt: skip
    """Per-step times of ``steps`` training steps of ``model`` on random data, without the first two."""
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
        callbacks=[timer, *callbacks],
    )
    loader = DataLoader(_data(shape, batch_size * steps), batch_size=batch_size, shuffle=False)
    trainer.fit(model, loader)
    return timer.times[2:]  # the first steps pay for allocation and kernel selection


def step_times(
    make_body, shape, batch_size: int, steps: int, optimizer: str, device: str, precision: str
) -> list[float]:
    torch.manual_seed(0)
    model = SAMClassifier(make_body(), optimizer=optimizer, rho=0.05, lr=0.01, lr_schedule="constant")
    return timed_fit(model, StepTimer(), [], shape, batch_size, steps, device, precision)


def measure(name: str, make_body, shape, batch_size: int, steps: int, rounds: int, device: str, precision: str) -> dict:
    times: dict[str, list[float]] = {o: [] for o in OPTIMIZERS}
    for _ in range(rounds):
        for optimizer in OPTIMIZERS:
            times[optimizer] += step_times(make_body, shape, batch_size, steps, optimizer, device, precision)
    medians = {o: statistics.median(t) for o, t in times.items()}
    return {"model": name, **{f"{o}_ms": 1e3 * m for o, m in medians.items()},
            "sam/sgd": medians["sam"] / medians["sgd"], "lsam/sgd": medians["lsam"] / medians["sgd"]}  # fmt: skip


class PlainClassifier(pl.LightningModule):
    """A body and a linear head, automatic optimization, SAMClassifier's SGD: a user's module, unaware of SAM."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.out_features, 2)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @override
    def training_step(self, batch, batch_idx) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


CALLBACK_RUNS = {
    "plain": lambda: [],
    "callback": lambda: [SharpnessAware(rho=0.05)],
    "every5": lambda: [SharpnessAware(rho=0.05, every_n_steps=5)],
}


class CPUStepTimer(StepTimer):
    """CPU time of this process per training step: on a CPU shared with other jobs, wall time measures their load."""

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.process_time()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.process_time() - self._start)


def callback_step_times(make_body, shape, batch_size: int, steps: int, run: str, device: str, precision: str) -> list:
    torch.manual_seed(0)
    if run == "samclassifier":
        model = SAMClassifier(make_body(), optimizer="sam", rho=0.05, lr=0.01, lr_schedule="constant")
    else:
        model = PlainClassifier(make_body())
    timer = CPUStepTimer() if device == "cpu" else StepTimer()
    callbacks = CALLBACK_RUNS.get(run, list)()
    return timed_fit(model, timer, callbacks, shape, batch_size, steps, device, precision)


def measure_callback(name: str, make_body, shape, batch_size: int, steps: int, rounds: int, device: str,
                     precision: str) -> dict:  # fmt: skip
    runs = (*CALLBACK_RUNS, "samclassifier")
    times: dict[str, list[float]] = {r: [] for r in runs}
    for _ in range(rounds):
        for run in runs:
            times[run] += callback_step_times(make_body, shape, batch_size, steps, run, device, precision)
    medians = {r: statistics.median(t) for r, t in times.items()}
    means = {r: statistics.mean(t) for r, t in times.items()}
    return {"model": name, **{f"{r}_ms": 1e3 * m for r, m in medians.items()}, "every5_mean_ms": 1e3 * means["every5"],
            "callback/sgd": medians["callback"] / medians["plain"], "every5/sgd": means["every5"] / means["plain"],
            "callback/samclassifier": medians["callback"] / medians["samclassifier"]}  # fmt: skip


def print_callback_rows(rows: list[dict]) -> None:
    header = ("model", "sgd ms", "SA ms", "SA/5 ms", "SAMC ms", "SA/SGD", "SA/5/SGD", "SA/SAMC")
    print("".join(f"{h:<26}" if i == 0 else f"{h:>10}" for i, h in enumerate(header)))
    for r in rows:
        keys = ("plain_ms", "callback_ms", "every5_mean_ms", "samclassifier_ms", "callback/sgd", "every5/sgd",
                "callback/samclassifier")  # fmt: skip
        print(f"{r['model']:<26}" + "".join(f"{r[k]:>10.2f}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=12, help="steps per fit (the first 2 are not timed)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three optimizers")
    parser.add_argument("--callback-only", action="store_true", help="only the SharpnessAware table")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    callback_rows = [
        measure_callback("resnet18 3x32x32 b64", lambda: ResNetBody(depth=18), (3, 32, 32), 64, args.steps,
                         args.rounds, args.device, args.precision),
    ]  # fmt: skip
    if args.callback_only:
        print(f"\ndevice={args.device} precision={args.precision} torch={torch.__version__} "
              f"threads={torch.get_num_threads()}")  # fmt: skip
        print_callback_rows(callback_rows)
        return
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
    print()
    print_callback_rows(callback_rows)


if __name__ == "__main__":
    main()
