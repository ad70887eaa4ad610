"""The toy study in one command: every run, the verdicts on the paper's three claims, the figures and the report.

    python -m experiments.toy            # the full study (about 25 minutes on two CPU cores) -> docs/
    python -m experiments.toy --quick    # a small study, about a minute, to check that it all runs -> runs/toy_quick/

Trains the toy (docs/method.md section 8) for every cell (variant x spiral turns x block size k) and method (SGD,
LSAM over ρ, the LSAM bias ablation, full SAM over ρ) with paired seeds, all methods and seeds of a cell stacked
into one vectorised training loop (:mod:`experiments.stacked_models`), cells in parallel worker processes. The
protocol (:data:`experiments.toy_claims.PROTOCOL`) is fixed in the code and printed before any result in
``<out>/toy_report.md``; every run goes to ``<out>/toy_runs.csv`` and the figures to ``<out>/toy_figures/``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from experiments.toy_claims import LORENZ_RHO, PRIMARY
from experiments.toy_report import write_report
from experiments.toy_training import Cell, Method, RunRecord, Training, train_cell


@dataclass(frozen=True)
class Study:
    """The cells, methods and seeds of one study."""

    variants: tuple[str, ...] = ("paper", "spread")
    turns: tuple[float, ...] = (0.5, 1.0, 2.0)
    block_sizes: tuple[int, ...] = (1, 8)
    lsam_rhos: tuple[float, ...] = (0.03, 0.1, 0.2, 0.3, 0.5)  # ρ = 0 is SGD
    bias_rho: float = LORENZ_RHO
    sam_rhos: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    seeds: tuple[int, ...] = tuple(range(20))
    training: Training = field(default_factory=Training)

    def cells(self) -> list[Cell]:
        """Every cell, the primary one first (its runs keep the traces the figures need)."""
        cells = [Cell(v, t, k) for v in self.variants for t in self.turns for k in self.block_sizes]
        return sorted(cells, key=lambda c: c != PRIMARY)

    def methods(self) -> list[Method]:
        """SGD, LSAM at every ρ, the LSAM bias ablation, full SAM at every ρ."""
        return [
            Method("sgd"),
            *(Method("lsam", rho) for rho in self.lsam_rhos),
            Method("lsam", self.bias_rho, head_bias=True),
            *(Method("sam", rho) for rho in self.sam_rhos),
        ]


STUDIES: dict[str, Study] = {
    "full": Study(),
    "quick": Study(
        turns=(1.0,),
        block_sizes=(1,),
        lsam_rhos=(0.1, 0.2, 0.5),
        sam_rhos=(0.05,),
        seeds=tuple(range(6)),
        training=Training(epochs=20),
    ),
}


def _train(args: tuple[Cell, list[Method], tuple[int, ...], Training, bool]) -> list[RunRecord]:
    torch.set_num_threads(1)  # one core per worker process: the cells run in parallel
    start = time.perf_counter()
    records = train_cell(*args)
    print(f"{args[0].label}: {len(records)} runs in {time.perf_counter() - start:.0f} s", flush=True)
    return records


def run_study(study: Study, workers: int = 2) -> list[RunRecord]:
    """Trains every cell (in ``workers`` processes; in this one when ``workers`` is 1)."""
    jobs = [(cell, study.methods(), study.seeds, study.training, cell == PRIMARY) for cell in study.cells()]
    if workers <= 1:
        return [r for job in jobs for r in _train(job)]
    context = multiprocessing.get_context("spawn")  # no forked torch state in the workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return [r for records in pool.map(_train, jobs) for r in records]


def main(argv: Sequence[str] | None = None) -> Path:
    """The command line: ``[--quick] [--out DIR] [--workers N]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small study (under 3 minutes on two cores)")
    parser.add_argument(
        "--out", type=Path, help="where the report, CSV and figures go (default: docs/, with --quick runs/toy_quick/)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one per core")
    parser.add_argument(
        "--records",
        type=Path,
        help="keep the runs in this file (torch.save); when it exists, rewrite the report from it without training",
    )
    args = parser.parse_args(argv)
    study = STUDIES["quick" if args.quick else "full"]
    default_out = Path("runs/toy_quick") if args.quick else Path("docs")  # a quick study never overwrites docs/
    command = "python -m experiments.toy" + (" --quick" if args.quick else "")
    if args.out is not None and args.out != default_out:
        command += f" --out {args.out}"
    args.out = args.out or default_out
    start = time.perf_counter()
    if args.records is not None and args.records.exists():
        saved = torch.load(args.records, weights_only=False)
        records, minutes = saved["records"], saved["minutes"]
    else:
        records = run_study(study, args.workers)
        minutes = (time.perf_counter() - start) / 60
        if args.records is not None:
            torch.save({"records": records, "minutes": minutes}, args.records)
    report = write_report(records, study.cells(), args.out, command, minutes, args.workers)
    print(f"Wrote {report} ({len(records)} runs, {minutes:.1f} minutes of training)")
    return report


if __name__ == "__main__":
    main()
