"""Median time per training step of SGD, SAM and LSAM, measured in one run, printed as Markdown tables of ratios.

    python benchmarks/step_cost.py                 # CPU: ResNet-18 at 3x32x32, batch 64, and the toy; eager, compiled
    python benchmarks/step_cost.py --device cuda   # the same on a GPU (synchronised timings)
    python benchmarks/step_cost.py --no-compile    # eager rows only (compiling adds about a minute on a CPU)
    python benchmarks/step_cost.py --callback-only # only the SharpnessAware table

Every step runs through a real Trainer (manual optimization, Lightning's optimizer.step()), so the numbers include
what a user pays. The optimizers are interleaved in rounds so that drift in machine load hits all of them alike.
Expected (docs/method.md section 3): LSAM about one SGD step, SAM about two. "compiled" rows compile the body in
place (``SAMClassifier(compile=True)``, inductor); the compilation itself happens in the untimed first steps.

The second table times the SharpnessAware callback on a plain automatic-optimization module (same body, head and
SGD): its step against the same module without the callback, with ``every_n_steps=5`` (mean over a whole number of
5-step periods, since the median would be a plain step), and against SAMClassifier's SAM step. Expected: about 2,
at most 1.3, and within 5 %. On the CPU both tables count this process's CPU time, not wall time, so that other
jobs on a shared machine do not decide the ratios; there, run with ``OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE``,
or threads spinning while they wait for a core count as busy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
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


def _timer(device: str) -> StepTimer:
    return CPUStepTimer() if device == "cpu" else StepTimer()


def _fresh_compiler(compile: bool) -> None:
    # every fit builds a new model: without a reset, each would add its graphs to the same cache, and past
    # torch._dynamo.config.recompile_limit the body would silently run eagerly
    if compile:
        torch._dynamo.reset()


def step_times(
    make_body, shape, batch_size: int, steps: int, optimizer: str, device: str, precision: str, compile: bool
) -> list[float]:
    torch.manual_seed(0)
    _fresh_compiler(compile)
    model = SAMClassifier(make_body(), optimizer=optimizer, rho=0.05, lr=0.01, lr_schedule="constant", compile=compile)
    return timed_fit(model, _timer(device), [], shape, batch_size, steps, device, precision)


def measure(name: str, make_body, shape, batch_size: int, steps: int, rounds: int, device: str, precision: str,
            compile: bool) -> dict:  # fmt: skip
    times: dict[str, list[float]] = {o: [] for o in OPTIMIZERS}
    for _ in range(rounds):
        for optimizer in OPTIMIZERS:
            times[optimizer] += step_times(make_body, shape, batch_size, steps, optimizer, device, precision, compile)
    medians = {o: statistics.median(t) for o, t in times.items()}
    return {"model": name, "mode": "compiled" if compile else "eager",
            **{f"{o}_ms": 1e3 * m for o, m in medians.items()},
            "sam/sgd": medians["sam"] / medians["sgd"], "lsam/sgd": medians["lsam"] / medians["sgd"]}  # fmt: skip


class PlainClassifier(pl.LightningModule):
    """A body and a linear head, automatic optimization, SAMClassifier's SGD: a user's module, unaware of SAM."""

    def __init__(self, body: nn.Module, compile: bool = False) -> None:
        super().__init__()
        self.body = body
        if compile:
            self.body.compile()  # in place, as SAMClassifier(compile=True) does
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


def callback_step_times(make_body, shape, batch_size: int, steps: int, run: str, device: str, precision: str,
                        compile: bool) -> list:  # fmt: skip
    torch.manual_seed(0)
    _fresh_compiler(compile)
    if run == "samclassifier":
        model: pl.LightningModule = SAMClassifier(
            make_body(), optimizer="sam", rho=0.05, lr=0.01, lr_schedule="constant", compile=compile
        )
    else:
        model = PlainClassifier(make_body(), compile=compile)
    callbacks = CALLBACK_RUNS.get(run, list)()
    return timed_fit(model, _timer(device), callbacks, shape, batch_size, steps, device, precision)


def measure_callback(name: str, make_body, shape, batch_size: int, steps: int, rounds: int, device: str,
                     precision: str, compile: bool) -> dict:  # fmt: skip
    runs = (*CALLBACK_RUNS, "samclassifier")
    times: dict[str, list[float]] = {r: [] for r in runs}
    for _ in range(rounds):
        for run in runs:
            times[run] += callback_step_times(make_body, shape, batch_size, steps, run, device, precision, compile)
    medians = {r: statistics.median(t) for r, t in times.items()}
    means = {r: statistics.mean(t) for r, t in times.items()}
    return {"model": name, "mode": "compiled" if compile else "eager",
            **{f"{r}_ms": 1e3 * m for r, m in medians.items()}, "every5_mean_ms": 1e3 * means["every5"],
            "callback/sgd": medians["callback"] / medians["plain"], "every5/sgd": means["every5"] / means["plain"],
            "callback/samclassifier": medians["callback"] / medians["samclassifier"]}  # fmt: skip


def markdown_table(header: tuple[str, ...], rows: list[dict], keys: tuple[str, ...]) -> str:
    """``rows`` as a Markdown table: model and mode, then ``keys`` (milliseconds and ratios, two decimals)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], r["mode"], *(f"{r[k]:.2f}" for k in keys)]) + " |")
    return "\n".join(lines)


def print_optimizer_rows(rows: list[dict]) -> None:
    header = ("model", "body", "SGD ms", "SAM ms", "LSAM ms", "SAM / SGD", "LSAM / SGD")
    print(markdown_table(header, rows, ("sgd_ms", "sam_ms", "lsam_ms", "sam/sgd", "lsam/sgd")))


def print_callback_rows(rows: list[dict]) -> None:
    header = ("model", "body", "SGD ms", "SharpnessAware ms", "every 5th ms", "SAMClassifier SAM ms",
              "SharpnessAware / SGD", "every 5th / SGD", "SharpnessAware / SAMClassifier SAM")  # fmt: skip
    keys = ("plain_ms", "callback_ms", "every5_mean_ms", "samclassifier_ms", "callback/sgd", "every5/sgd",
            "callback/samclassifier")  # fmt: skip
    print(markdown_table(header, rows, keys))


def machine(device: str, precision: str) -> str:
    """One line naming where and when the tables were measured."""
    where = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()}-core {platform.machine()} CPU"
    clock = "CPU time of this process" if device == "cpu" else "wall time, synchronised"
    return (f"{where}, {precision}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {clock}, "
            f"{datetime.date.today().isoformat()}")  # fmt: skip


MODELS = {  # name -> body, input shape, batch size, steps per fit as a multiple of --steps
    "ResNet-18 3x32x32 b64": (lambda: ResNetBody(depth=18), (3, 32, 32), 64, 1),
    "toy two-branch MLP b128": (TwoBranchMLP, (3,), 128, 4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=12, help="steps per fit (the first 2 are not timed)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three optimizers")
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--callback-only", action="store_true", help="only the SharpnessAware table")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    modes = (False,) if args.no_compile else (False, True)
    rows, callback_rows = [], []
    for name, (make_body, shape, batch_size, multiple) in MODELS.items():
        steps = multiple * args.steps
        for compile in modes:
            if not args.callback_only:
                rows.append(measure(name, make_body, shape, batch_size, steps, args.rounds, args.device,
                                    args.precision, compile))  # fmt: skip
            callback_rows.append(measure_callback(name, make_body, shape, batch_size, steps, args.rounds,
                                                  args.device, args.precision, compile))  # fmt: skip
    print(f"\n{machine(args.device, args.precision)}\n")
    if rows:
        print_optimizer_rows(rows)
        print()
    print_callback_rows(callback_rows)


if __name__ == "__main__":
    main()
