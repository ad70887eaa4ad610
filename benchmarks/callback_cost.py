"""Times FeatureProbe's solver, :func:`fit_linear_probe`, against scikit-learn's ``LogisticRegression``.

Both solve the same problem, in one run on the same data: 20,000 x 512 probe-training representations (and
5,000 probe-test ones) carrying two binary features, one strongly and one weakly encoded; per feature, ``l2`` is
chosen from the same grid on the same held-out split (:func:`held_out_split`, best held-out accuracy, ties to
the stronger regularisation), then the probe is refit on all the training data. scikit-learn gets the same
standardisation and the equivalent ``C`` (for two classes, our symmetric two-row objective with strength ``l2``
is binary logistic regression with ``C = 2 / (l2 · n)``; for more classes ``C = 1 / (l2 · n)``), fitted from
scratch per grid value as ``LogisticRegression`` is normally used. Each side runs ``--repeats`` times,
interleaved; the medians are compared.

Run: ``python benchmarks/callback_cost.py [--device cuda] [--repeats 3] [--threads 2]``. Target: ours at most half
scikit-learn's time at equal accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from lightning_sam.functional.linear_probe import DEFAULT_L2_GRID, fit_linear_probe, held_out_split


def make_representations(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, dim)`` Gaussian representations with two binary features along random directions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n, 2), generator=g)
    directions = torch.randn(2, dim, generator=g)
    directions = directions / directions.norm(dim=1, keepdim=True)
    strength = torch.tensor([3.0, 0.6])  # feature 0 well separated ("easy"), feature 1 barely ("hard")
    signal = ((2 * labels - 1).float() * strength) @ directions
    return torch.randn(n, dim, generator=g) + signal, labels


def sklearn_probe(x: np.ndarray, y: np.ndarray, l2_grid: tuple[float, ...], fit_idx, held_idx):
    """The same selection with scikit-learn: returns the refit model and the scaler statistics."""
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    classes = len(np.unique(y))

    def c_of(l2: float, n: int) -> float:
        return (2.0 if classes == 2 else 1.0) / (l2 * n)

    best_acc, best_l2 = -1.0, l2_grid[0]
    for l2 in sorted(l2_grid, reverse=True):
        model = LogisticRegression(C=c_of(l2, len(fit_idx)), max_iter=1000).fit(z[fit_idx], y[fit_idx])
        acc = model.score(z[held_idx], y[held_idx])
        if acc > best_acc:
            best_acc, best_l2 = acc, l2
    model = LogisticRegression(C=c_of(best_l2, len(z)), max_iter=1000).fit(z, y)
    return model, mean, std, best_l2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: as installed)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # numpy / scipy BLAS and OpenMP, used by scikit-learn

    # one draw, split afterwards: train and test share the feature directions
    x_all, labels_all = make_representations(args.n + 5_000, args.dim, seed=0)
    x, labels, x_test, labels_test = x_all[: args.n], labels_all[: args.n], x_all[args.n :], labels_all[args.n :]
    x_np, x_test_np = x.double().numpy(), x_test.double().numpy()
    x_dev, x_test_dev = x.to(args.device), x_test.to(args.device)
    labels_dev, labels_test_dev = labels.to(args.device), labels_test.to(args.device)
    splits = [held_out_split(labels[:, k], 0.2, seed=0) for k in range(2)]

    chosen: dict[str, list[float]] = {}

    def run_ours() -> list[float]:
        probes = [fit_linear_probe(x_dev, labels_dev[:, k], l2_grid=DEFAULT_L2_GRID) for k in range(2)]
        if x_dev.is_cuda:
            torch.cuda.synchronize()
        chosen["ours"] = [p.l2 for p in probes]
        return [p.accuracy(x_test_dev, labels_test_dev[:, k]) for k, p in enumerate(probes)]

    def run_sklearn() -> list[float]:
        accs, chosen["sklearn"] = [], []
        for k in range(2):
            y = labels[:, k].numpy()
            model, mean, std, l2 = sklearn_probe(x_np, y, DEFAULT_L2_GRID, splits[k][0].numpy(), splits[k][1].numpy())
            accs.append(model.score((x_test_np - mean) / std, labels_test[:, k].numpy()))
            chosen["sklearn"].append(l2)
        return accs

    run_ours()  # warm-up (kernel selection, allocator)
    times: dict[str, list[float]] = {"ours": [], "sklearn": []}
    accuracies: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", run_ours), ("sklearn", run_sklearn)):
            start = time.perf_counter()
            accuracies[name] = fn()
            times[name].append(time.perf_counter() - start)

    ours, theirs = statistics.median(times["ours"]), statistics.median(times["sklearn"])
    print(f"data: {args.n} x {args.dim} probe-train, 5000 probe-test, 2 binary features; l2 grid {DEFAULT_L2_GRID}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ours on {args.device}")
    for name in ("ours", "sklearn"):
        accs = ", ".join(f"feature {k} {a:.4f}" for k, a in enumerate(accuracies[name]))
        runs = ", ".join(f"{t:.3f}" for t in times[name])
        median = statistics.median(times[name])
        print(f"{name:8s} median {median:.3f} s (runs {runs}); test accuracy {accs}; l2 chosen {chosen[name]}")
    gap = max(abs(a - b) for a, b in zip(accuracies["ours"], accuracies["sklearn"], strict=True))
    print(f"time ratio ours / sklearn = {ours / theirs:.3f} (target <= 0.5); largest accuracy gap {gap:.4f}")


if __name__ == "__main__":
    main()
