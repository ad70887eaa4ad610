"""What the measurement callbacks cost the default run: ``python train.py`` with them against without them.

    python benchmarks/measurement_cost.py               # 5 interleaved pairs of the default toy run, 1 thread
    python benchmarks/measurement_cost.py --pairs 9 -- --trainer.max_epochs 20   # arguments after -- go to train.py

Each pair runs ``train.py`` twice, as a user would (a fresh process, its imports included), once as it is and once
with ``--measure.probe false --measure.importance false --measure.scaling false --measure.groups false``, each in a
temporary folder; the two are interleaved so that drift in machine load hits both alike. Printed as Markdown: wall
time and CPU time (the child's user + system) of every pair, their ratios, and the median and range of the ratios.
The runs get ``OMP_NUM_THREADS=1`` (``--threads``): on a shared machine, threads spinning while they wait for a
busy core would count as work, and the ratios would measure the load instead (6x was seen with 2 threads).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = Path(__file__).resolve().parent.parent / "train.py"
WITHOUT = ["--measure.probe", "false", "--measure.importance", "false", "--measure.scaling", "false",
           "--measure.groups", "false"]  # fmt: skip


def timed_run(arguments: list[str], threads: int) -> tuple[float, float]:
    """Wall and CPU seconds of one ``train.py`` run in a fresh folder, on ``threads`` threads; raises if it fails."""
    with tempfile.TemporaryDirectory() as folder:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(TRAIN), *arguments, f"--trainer.default_root_dir={folder}"],
            capture_output=True, text=True, cwd=folder, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )  # fmt: skip
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"train.py {' '.join(arguments)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs of runs")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("train_args", nargs="*", help="arguments for train.py (after --)")
    args = parser.parse_args()
    rows = []
    for pair in range(1, args.pairs + 1):
        with_wall, with_cpu = timed_run(args.train_args, args.threads)
        without_wall, without_cpu = timed_run([*args.train_args, *WITHOUT], args.threads)
        rows.append((pair, with_wall, without_wall, with_cpu, without_cpu))
        print(f"pair {pair}: {with_wall:.2f} s / {without_wall:.2f} s wall", file=sys.stderr)
    print(f"\n{os.cpu_count()}-core {platform.machine()} CPU, OMP_NUM_THREADS={args.threads}, "
          f"train.py {' '.join(args.train_args) or '(defaults)'}, {datetime.date.today().isoformat()}\n")  # fmt: skip
    print("| pair | with s | without s | wall ratio | with CPU s | without CPU s | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    for pair, ww, wo, cw, co in rows:
        print(f"| {pair} | {ww:.2f} | {wo:.2f} | {ww / wo:.3f} | {cw:.2f} | {co:.2f} | {cw / co:.3f} |")
    print()
    for name, ratios in (("wall", [r[1] / r[2] for r in rows]), ("CPU", [r[3] / r[4] for r in rows])):
        median, low, high = statistics.median(ratios), min(ratios), max(ratios)
        print(f"{name} ratio: median {median:.3f}, range {low:.3f}-{high:.3f}")


if __name__ == "__main__":
    main()
