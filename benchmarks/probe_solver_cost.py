"""Times :func:`fit_linear_probe` with Newton's method against L-BFGS on probes of growing size.

Each probe size runs both solvers on the same 2,000 Gaussian-blob representations (the toy's probe has ``D = 2``,
``C = 2``), forcing the solver through ``NEWTON_MAX_PARAMETERS``; the medians of ``--repeats`` interleaved runs
are printed with their ratio and the chosen ``l2``. Where the ratio crosses 1 is where the threshold belongs.

Run: ``OMP_NUM_THREADS=1 python benchmarks/probe_solver_cost.py [--repeats 30] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_sam.functional import linear_probe

SHAPES = ((2, 2), (2, 5), (2, 10), (2, 15), (2, 20), (2, 40), (3, 5), (3, 10), (5, 6), (10, 3), (2, 100))


def blobs(n: int, num_classes: int, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, dim)`` representations around one random centre per class, and their labels."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, dim, generator=g) + 1.5 * torch.randn(num_classes, dim, generator=g)[y]
    return x.to(device), y.to(device)


def median_ms(x: torch.Tensor, y: torch.Tensor, newton: bool, repeats: int) -> tuple[float, float]:
    """Median seconds per fit, in ms, and the chosen ``l2``."""
    default = linear_probe.NEWTON_MAX_PARAMETERS
    linear_probe.NEWTON_MAX_PARAMETERS = 10**9 if newton else 0
    try:
        l2 = linear_probe.fit_linear_probe(x, y).l2  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            linear_probe.fit_linear_probe(x, y)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    finally:
        linear_probe.NEWTON_MAX_PARAMETERS = default
    return 1e3 * statistics.median(times), l2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"threshold: P <= {linear_probe.NEWTON_MAX_PARAMETERS}\n")
    print("| C | D | P | Newton ms | L-BFGS ms | ratio | l2 (Newton, L-BFGS) |\n|---|---|---|---|---|---|---|")
    for num_classes, dim in SHAPES:
        x, y = blobs(2000, num_classes, dim, args.device)
        newton, newton_l2 = median_ms(x, y, True, args.repeats)
        lbfgs, lbfgs_l2 = median_ms(x, y, False, args.repeats)
        cells = (num_classes, dim, num_classes * (dim + 1), f"{newton:.2f}", f"{lbfgs:.2f}", f"{newton / lbfgs:.2f}")
        print("| " + " | ".join(map(str, cells)) + f" | {newton_l2:g}, {lbfgs_l2:g} |")


if __name__ == "__main__":
    main()
