"""One short check for a machine with CUDA: SAM and LSAM under mixed precision on ResNet-18, an fp16 overflow, timings.

    python benchmarks/gpu_check.py            # about a minute on one GPU; prints a table, exits 1 if a check fails

1. SGD, SAM and LSAM train a few steps of ResNet-18 (3x32x32, batch 128) under ``16-mixed`` and ``bf16-mixed``:
   the loss is finite and the parameters move.
2. An fp16 overflow: a batch whose activations overflow in half precision. The ascent gradient is non-finite, so
   the perturbation's scale is 0 and the phantom gradient non-finite; the GradScaler skips the update and lowers its
   scale; the parameters are exactly the real ones they were before the step.
3. Median step times and their ratios to SGD, per precision.
4. The sharded path on this one GPU (``ModelParallelStrategy``, FSDP2 over one process, NCCL): SAM, ASAM and LSAM
   with the body's parameters as DTensors take the same steps as without sharding. Several GPUs are not needed for
   this check: the multi-process runs (2 processes equal 1, resume, exception at the phantom point) were simulated
   on CPU processes (gloo) by the test suite.

Without CUDA it says so and exits 0, so that it can run anywhere.
"""

from __future__ import annotations

import statistics
import sys
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_sam import SAMClassifier
from lightning_sam.bodies import ResNetBody
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset

OPTIMIZERS = ("sgd", "sam", "lsam")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
BATCH, STEPS = 128, 30


class StepTimer(pl.Callback):
    """Times every training step, synchronising CUDA around it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def _data(n: int, scale: float = 1.0) -> FeatureTensorDataset:
    g = torch.Generator().manual_seed(0)
    x = scale * torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return FeatureTensorDataset(x, y, y[:, None])


def _fit(optimizer: str, precision: str, data: FeatureTensorDataset, steps: int) -> tuple[SAMClassifier, pl.Trainer]:
    torch.manual_seed(0)
    model = SAMClassifier(ResNetBody(depth=18), num_classes=10, optimizer=optimizer, rho=0.05, lr=0.05)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[StepTimer()],
    )
    trainer.fit(model, DataLoader(data, batch_size=BATCH, shuffle=False))
    return model, trainer


def check_training() -> tuple[list[str], list[str]]:
    """Trains every optimizer under every precision; returns failures and the timing table's rows."""
    failures, rows = [], []
    data = _data(BATCH * STEPS)
    for precision in PRECISIONS:
        medians = {}
        for optimizer in OPTIMIZERS:
            torch.manual_seed(0)
            start = {k: v.clone() for k, v in ResNetBody(depth=18).state_dict().items()}
            model, trainer = _fit(optimizer, precision, data, STEPS)
            moved = any(not torch.equal(v.cpu(), start[k]) for k, v in model.body.state_dict().items())
            finite = all(torch.isfinite(p).all() for p in model.parameters())
            loss = trainer.callback_metrics.get("train/loss")
            if not (moved and finite and loss is not None and torch.isfinite(loss)):
                failures.append(f"{optimizer} under {precision}: moved={moved} finite={finite} loss={loss}")
            timer = next(c for c in trainer.callbacks if isinstance(c, StepTimer))
            medians[optimizer] = statistics.median(timer.times[5:])
        rows.append(
            f"{precision:<11}" + "".join(f"{1e3 * medians[o]:>9.1f}" for o in OPTIMIZERS)
            + f"{medians['sam'] / medians['sgd']:>9.2f}{medians['lsam'] / medians['sgd']:>10.2f}"
        )  # fmt: skip
    return failures, rows


def check_fp16_overflow() -> list[str]:
    """A batch that overflows fp16: the step is skipped and the real parameters are untouched."""
    failures = []
    for optimizer in ("sam", "lsam"):
        torch.manual_seed(0)
        model = SAMClassifier(ResNetBody(depth=18), num_classes=10, optimizer=optimizer, rho=0.05, lr=0.05)
        before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        trainer = pl.Trainer(
            accelerator="gpu", devices=1, precision="16-mixed", max_steps=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(model, DataLoader(_data(BATCH, scale=1e30), batch_size=BATCH))
        scaler = trainer.precision_plugin.scaler
        changed = [k for k, v in model.state_dict().items() if "running" not in k and k in before
                   and not torch.equal(v.cpu(), before[k])]  # fmt: skip
        at_phantom = model.optimizers().optimizer.at_phantom_point
        if changed or at_phantom or scaler.get_scale() >= 2.0**16:
            failures.append(
                f"fp16 overflow under {optimizer}: changed={changed[:3]} at_phantom={at_phantom} "
                f"scale={scaler.get_scale()}"
            )
    return failures


def check_sharded() -> list[str]:
    """SAM, ASAM and LSAM with the body sharded (FSDP2, one process) step as without sharding."""
    from pytorch_lightning.strategies import ModelParallelStrategy
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    failures = []
    data = _data(BATCH * 5)
    for optimizer in ("sam", "asam", "lsam"):
        updates = {}
        for sharded in (False, True):
            torch.manual_seed(0)
            model = SAMClassifier(ResNetBody(depth=18), num_classes=10, optimizer=optimizer, rho=0.05, lr=0.05)
            start = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
            strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1) if sharded else "auto"
            trainer = pl.Trainer(
                accelerator="gpu", devices=1, strategy=strategy, max_steps=5, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            )  # fmt: skip
            trainer.fit(model, DataLoader(data, batch_size=BATCH, shuffle=False))
            if sharded and not any(hasattr(p, "to_local") for p in model.body.parameters()):
                failures.append(f"sharded {optimizer}: the body's parameters are not DTensors")
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)) if sharded else None
            state = state or model.state_dict()
            updates[sharded] = torch.cat([(state[k].float().cpu() - v.float()).flatten() for k, v in start.items()])
        # cuDNN may choose other kernels in the two runs: compare the updates, not the bits
        error = float((updates[True] - updates[False]).norm() / updates[False].norm())
        if not error < 1e-2 or not torch.isfinite(updates[True]).all():
            failures.append(f"sharded {optimizer}: update differs from the unsharded one by {error:.2e} (relative)")
    return failures


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; nothing to check (run this on a machine with a GPU).")
        return 0
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    failures, rows = check_training()
    overflow_failures = check_fp16_overflow()
    sharded_failures = check_sharded()
    failures += overflow_failures + sharded_failures
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}  pytorch-lightning {pl.__version__}")
    print(f"ResNet-18, 3x32x32, batch {BATCH}: median step time (ms) over steps 6..{STEPS}")
    print(f"{'precision':<11}" + "".join(f"{o:>9}" for o in OPTIMIZERS) + f"{'SAM/SGD':>9}{'LSAM/SGD':>10}")
    print("\n".join(rows))
    print(f"fp16 overflow step skipped with the real parameters restored: {'no' if overflow_failures else 'yes'}")
    print(f"sharded body (FSDP2, 1 GPU): SAM, ASAM, LSAM step as unsharded: {'no' if sharded_failures else 'yes'}")
    print("(multi-GPU sharding and DDP were simulated with CPU processes, gloo, in the test suite; not run on GPUs)")
    print(f"{'FAILED' if failures else 'all checks passed'} in {time.perf_counter() - start:.0f} s")
    for failure in failures:
        print("  -", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
