"""The toy report's figures, after the paper's Figures 2A, 2B, 3 and 4; one function per figure.

Each draws already-measured records with matplotlib's object API (no pyplot state) into one PNG. Every seed is drawn
(small dots or thin lines) with the median over seeds on top: outcomes can be bimodal, so no mean ± sd. Mid-run
comparisons between methods are at matched training loss, never at the same step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from experiments.toy_claims import LORENZ_RHO, by_method, is_degenerate, lsam_methods
from experiments.toy_training import LOSS_LEVELS, Cell, Method, RunRecord
from lightning_sam.functional import lorenz_curve

DPI = 110


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    return path


def _ordered_methods(methods: Sequence[Method]) -> list[Method]:
    order = {"sgd": 0, "lsam": 1, "sam": 3}
    return sorted(methods, key=lambda m: (order[m.optimizer] + (1 if m.head_bias else 0), m.rho))


def _strip(ax: Axes, groups: dict[Method, list[RunRecord]], value, colour: str = "C0") -> list[Method]:
    """Every seed's value per method (dots) and the median (a bar); degenerate methods in grey."""
    methods = _ordered_methods(list(groups))
    for i, m in enumerate(methods):
        values = [value(r) for r in groups[m]]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            continue
        c = "0.6" if is_degenerate(groups[m]) else colour
        offsets = torch.linspace(-0.18, 0.18, len(values)).tolist() if len(values) > 1 else [0.0]
        ax.scatter([i + o for o in offsets], values, s=9, color=c, alpha=0.6, linewidths=0)
        ax.hlines(statistics.median(values), i - 0.3, i + 0.3, color=c, linewidth=2.2)
    ax.set_xticks(range(len(methods)), [m.label.replace(" ", "\n", 1) for m in methods], fontsize=6.5)
    return methods


def plot_probe_error(records: Sequence[RunRecord], cell: Cell, path: Path) -> Path:
    """Figure 2A: every seed's final hard- and easy-feature probe error per method in one cell."""
    groups = by_method(records, cell)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    for ax, feature, colour in zip(figure.subplots(1, 2), ("hard", "easy"), ("C3", "C0"), strict=True):
        _strip(ax, groups, lambda r, f=feature: getattr(r, f"probe_{f}"), colour)
        sgd = statistics.median(getattr(r, f"probe_{feature}") for r in groups[Method("sgd")])
        ax.axhline(sgd, color="k", linestyle=":", linewidth=0.8, label="SGD median")
        ax.axhline(0.5, color="0.5", linestyle="--", linewidth=0.8, label="chance")
        ax.set(ylabel=f"{feature}-feature probe error", ylim=(-0.02, 0.62), title=f"{feature} feature")
        ax.legend(fontsize=7)
    figure.suptitle(
        f"Figure 2A ({cell.label}): final probe error, every seed (dots) and median (bar); grey: degenerate"
    )
    return _save(figure, path)


def plot_probe_error_cells(records: Sequence[RunRecord], cells: Sequence[Cell], path: Path) -> Path:
    """Figure 2A in every cell: the hard-feature probe error per method."""
    figure = _cell_grid(cells)
    for ax, cell in zip(figure.axes, cells, strict=True):
        _strip(ax, by_method(records, cell), lambda r: r.probe_hard, "C3")
        ax.axhline(0.5, color="0.5", linestyle="--", linewidth=0.8)
        ax.set(title=cell.label, ylim=(-0.02, 0.62), ylabel="hard probe error")
    figure.suptitle("Figure 2A, every cell: hard-feature probe error, every seed and the median; grey: degenerate")
    return _save(figure, path)


def _cell_grid(cells: Sequence[Cell]) -> Figure:
    columns = min(3, len(cells))
    rows = -(-len(cells) // columns)
    figure = Figure(figsize=(6.2 * columns, 3.4 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax in axes[len(cells) :]:
        figure.delaxes(ax)
    return figure


def plot_relative_gain(records: Sequence[RunRecord], cells: Sequence[Cell], path: Path) -> Path:
    """Figure 2B: each run's median relative gain ℓ before the fit, against LSAM's ρ, in every cell."""
    figure = _cell_grid(cells)
    for ax, cell in zip(figure.axes, cells, strict=True):
        groups = by_method(records, cell)
        methods = [Method("sgd"), *lsam_methods(list(groups))]
        for i, bias in ((0, False), (1, True)):
            line = methods if not bias else lsam_methods(list(groups), True)
            for m in line:
                values = [r.ell_before for r in groups[m] if math.isfinite(r.ell_before)]
                if not values:
                    continue
                c = "0.6" if is_degenerate(groups[m]) else f"C{i}"
                ax.scatter([m.rho] * len(values), values, s=8, color=c, alpha=0.5, linewidths=0)
            medians = [statistics.median(r.ell_before for r in groups[m]) for m in line]
            ax.plot(
                [m.rho for m in line],
                medians,
                marker="o" if not bias else "s",
                color=f"C{i}",
                label="LSAM (weight)" if not bias else "LSAM+bias",
            )
        ax.axhline(0, color="k", linewidth=0.6)
        ax.set(title=cell.label, xlabel="ρ (0 = SGD)", ylabel="median ℓ before the fit")
        ax.legend(fontsize=7)
    figure.suptitle("Figure 2B: relative gain ℓ = log(r_hard / r_easy) of the phantom head, every seed and medians")
    return _save(figure, path)


def plot_lorenz(records: Sequence[RunRecord], cell: Cell, path: Path) -> Path:
    """Figure 3: Lorenz curves at each matched loss level, first seed: SGD real, LSAM real, phantom, within class."""
    groups = by_method(records, cell)
    lsam_rhos = lsam_methods(list(groups))
    drawn = min(lsam_rhos, key=lambda m: abs(m.rho - LORENZ_RHO))  # LORENZ_RHO unless the study lacks it
    sgd, lsam = groups[Method("sgd")][0], groups[drawn][0]
    figure = Figure(figsize=(4.2 * len(LOSS_LEVELS), 4.4), layout="constrained")
    for ax, level in zip(figure.subplots(1, len(LOSS_LEVELS)), LOSS_LEVELS, strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8)
        curves = [
            (sgd, "real", "SGD real λ", "k", "-"),
            (lsam, "real", "LSAM real λ", "C0", "--"),
            (lsam, "phantom", "LSAM phantom λ̃", "C3", "-"),
        ]
        for run, key, label, colour, style in curves:
            kept = run.weights.get(level)
            if kept is None:
                continue
            x, y = lorenz_curve(kept[key].float())
            gini = run.levels[level].gini_real if key == "real" else run.levels[level].gini_phantom
            ax.plot(x, y, color=colour, linestyle=style, label=f"{label} (G={gini:.2f}, step {run.levels[level].step})")
        kept = lsam.weights.get(level)
        if kept is not None:
            for c in (0, 1):
                x, y = lorenz_curve(kept["phantom"][kept["y"] == c].float())
                ax.plot(
                    x,
                    y,
                    color="C3",
                    linestyle=":",
                    linewidth=1,
                    label="LSAM phantom, each class alone" if c == 0 else None,
                )
        ax.set(title=f"training loss ≤ {level:g}", xlabel="share of examples", ylabel="share of weight")
        ax.legend(fontsize=6.5, loc="upper left")
    figure.suptitle(f"Figure 3 ({cell.label}, seed {sgd.seed}, {drawn.label}): importance weights at matched loss")
    return _save(figure, path)


def plot_gini_levels(records: Sequence[RunRecord], cell: Cell, path: Path) -> Path:
    """Figure 3 (levels): Gini at each matched loss level, every seed and medians, overall and within class."""
    groups = by_method(records, cell)
    series = [(Method("sgd"), "real", "SGD real", "k")]
    for i, m in enumerate(lsam_methods(list(groups))):
        series.append((m, "phantom", f"{m.label} phantom", f"C{i + 1}"))
    series.append((Method("lsam", LORENZ_RHO), "real", f"LSAM ρ={LORENZ_RHO:g} real", "0.5"))
    figure = Figure(figsize=(12, 4.6), layout="constrained")
    for ax, prefix, title in zip(figure.subplots(1, 2), ("gini", "within"), ("overall", "within class"), strict=True):
        for m, which, label, colour in series:
            if m not in groups:
                continue
            key = f"{prefix}_{which}"
            seeds_drawn = m.optimizer == "sgd" or (m.rho == LORENZ_RHO and which == "phantom")
            for r in groups[m] if seeds_drawn else []:  # every seed of SGD and of the Figure 3 ρ only: legibility
                ys = [getattr(r.levels[lv], key) if lv in r.levels else math.nan for lv in LOSS_LEVELS]
                ax.plot(LOSS_LEVELS, ys, color=colour, alpha=0.12, linewidth=0.7)
            medians = [
                statistics.median([getattr(r.levels[lv], key) for r in groups[m] if lv in r.levels] or [math.nan])
                for lv in LOSS_LEVELS
            ]
            ax.plot(
                LOSS_LEVELS,
                medians,
                color=colour,
                marker="o",
                linewidth=2,
                label=label,
                linestyle="--" if which == "real" and m.optimizer == "lsam" else "-",
            )
        ax.set(xscale="log", xlabel="matched training loss L", ylabel=f"Gini ({title})", title=title)
        ax.invert_xaxis()
        ax.legend(fontsize=6.5)
    figure.suptitle(
        f"Figure 3 ({cell.label}): Gini at matched training loss; thin: every seed of SGD and LSAM ρ={LORENZ_RHO:g}"
    )
    return _save(figure, path)


def plot_relative_gain_trace(records: Sequence[RunRecord], cell: Cell, path: Path) -> Path:
    """Figure 4: per-batch relative gain ℓ along training for each LSAM ρ (median over seeds; each run's own steps)."""
    groups = by_method(records, cell)
    figure = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = figure.add_subplot()
    for i, m in enumerate(lsam_methods(list(groups))):
        traces = [r.ell_trace for r in groups[m] if r.ell_trace]
        if not traces:
            continue
        stacked = torch.tensor(traces)
        steps = torch.arange(1, stacked.shape[1] + 1)
        for trace in stacked[:5]:
            ax.plot(steps, trace, color=f"C{i}", alpha=0.15, linewidth=0.5)
        fit = (
            statistics.median(r.fit_step for r in groups[m] if r.fit_step is not None)
            if any(r.fit_step is not None for r in groups[m])
            else None
        )
        ax.plot(
            steps, stacked.median(0).values, color=f"C{i}", linewidth=1.5, label=f"{m.label} (median fit step {fit})"
        )
    ax.axhline(0, color="k", linewidth=0.6)
    ax.set(
        xscale="log",
        xlabel="training step",
        ylabel="ℓ per batch",
        title=f"Figure 4 ({cell.label}): relative gain per batch, median and 5 seeds",
    )
    ax.legend(fontsize=7)
    return _save(figure, path)
