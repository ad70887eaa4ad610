"""The toy report's figures, after the paper's Figures 1 (right), 2A, 2B, 3, 4 and 5; one function per figure.

Each takes already-measured numbers (nothing is trained here), draws with matplotlib's object API (no pyplot
state, safe anywhere) and writes one PNG.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from lightning_sam.experiments.checkpoint_weights import CheckpointWeights
from lightning_sam.experiments.margin import binned_median
from lightning_sam.experiments.toy_run import ToyRunRecord, toy_data, toy_model
from lightning_sam.experiments.toy_summary import SettingSummary
from lightning_sam.experiments.trajectory import smoothed
from lightning_sam.functional import gini_coefficient, lorenz_curve
from lightning_sam.sam_classifier import SAMClassifier

DPI = 110


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def _by_turns(settings: list[SettingSummary], optimizers: tuple[str, ...]) -> dict[float, list[SettingSummary]]:
    lines: dict[float, list[SettingSummary]] = {}
    for s in settings:
        if s.optimizer in optimizers:
            lines.setdefault(s.turns, []).append(s)
    return {t: sorted(v, key=lambda s: s.rho) for t, v in lines.items()}


def plot_probe_error(settings: list[SettingSummary], path: Path) -> Path:
    """Figure 2A: hard-feature probe error against ``ρ`` (SGD at 0, LSAM lines, SAM markers), one colour per
    complexity; mean ± sd over seeds."""
    figure = Figure(figsize=(6, 4.2))
    ax = figure.add_subplot()
    colours = {}
    for turns, line in _by_turns(settings, ("sgd", "lsam")).items():
        (handle,) = ax.plot(
            [s.rho for s in line], [s.mean["probe_hard"] for s in line], marker="o", label=f"LSAM, turns={turns:g}"
        )
        ax.errorbar(
            [s.rho for s in line],
            [s.mean["probe_hard"] for s in line],
            yerr=[s.std["probe_hard"] for s in line],
            fmt="none",
            color=handle.get_color(),
            alpha=0.5,
        )
        colours[turns] = handle.get_color()
    for turns, line in _by_turns(settings, ("sam",)).items():
        ax.errorbar(
            [s.rho for s in line],
            [s.mean["probe_hard"] for s in line],
            yerr=[s.std["probe_hard"] for s in line],
            fmt="s",
            mfc="none",
            color=colours.get(turns),
            label=f"SAM, turns={turns:g}",
        )
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    figure.set_size_inches(7.5, 4.2)
    ax.set(
        xlabel="ρ (0 = SGD)",
        ylabel="hard-feature probe error",
        ylim=(0, 0.6),
        title="Figure 2A: probe error of the hard feature",
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(figure, path)


def plot_scaling_ratios(settings: list[SettingSummary], path: Path) -> Path:
    """Figure 2B: trajectory-mean ``ṽ_hard/ṽ_easy`` (solid) and ``v_hard/v_easy`` (dashed) against ``ρ``."""
    figure = Figure(figsize=(6, 4.2))
    ax = figure.add_subplot()
    for turns, line in _by_turns(settings, ("sgd", "lsam")).items():
        rho = [s.rho for s in line]
        (handle,) = ax.plot(
            rho, [s.mean["ratio_phantom"] for s in line], marker="o", label=f"turns={turns:g}: phantom ṽ_hard/ṽ_easy"
        )
        ax.plot(
            rho,
            [s.mean["ratio_real"] for s in line],
            marker="x",
            linestyle="--",
            color=handle.get_color(),
            label=f"turns={turns:g}: real v_hard/v_easy",
        )
    ax.set(
        xlabel="LSAM ρ (0 = SGD)",
        ylabel="hard / easy head weight (trajectory mean)",
        yscale="log",
        title="Figure 2B: learning-rate scaling",
    )
    figure.set_size_inches(8, 4.2)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(figure, path)


def plot_lorenz(panels: list[tuple[str, CheckpointWeights, CheckpointWeights]], path: Path) -> Path:
    """Figure 3: Lorenz curves of SGD's real and LSAM's phantom weights, one panel per checkpoint.

    Args:
        panels: ``(title, SGD checkpoint, LSAM checkpoint)`` per panel.
        path: the PNG to write.
    """
    figure = Figure(figsize=(4.6 * len(panels), 4.4))
    for k, (title, sgd, lsam) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="equal weights")
        for weights, label in ((sgd.real, "SGD real λ"), (lsam.phantom, "LSAM phantom λ̃")):
            x, y = lorenz_curve(weights)
            note = " (all 0)" if float(weights.sum()) == 0 else ""
            ax.plot(x.numpy(), y.numpy(), label=f"{label}: Gini {gini_coefficient(weights).item():.3f}{note}")
        ax.set(
            xlabel="fraction of examples (ascending weight)",
            ylabel="fraction of total weight",
            xlim=(0, 1),
            ylim=(0, 1),
            title=title,
        )
        ax.legend(loc="upper left", fontsize=7)
    return _save(figure, path)


def plot_gini_trajectory(sgd: SettingSummary, lsam: SettingSummary, threshold: float, path: Path) -> Path:
    """Figure 3 (dynamics): Gini of SGD's real and LSAM's phantom weights at every measured step, one thin line
    per seed and the seed mean thick, above the smoothed training loss."""
    figure = Figure(figsize=(7, 6))
    top = figure.add_subplot(2, 1, 1)
    bottom = figure.add_subplot(2, 1, 2, sharex=top)
    for setting, key, label in (
        (sgd, "importance/gini_real", "SGD real"),
        (lsam, "importance/gini_phantom", f"{lsam.label} phantom"),
    ):
        colour = None
        curves = []
        for run in setting.runs:
            steps = [m["step"] for m in run.record.measurements]
            values = [m[key] for m in run.record.measurements]
            curves.append(values)
            (handle,) = top.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
            colour = handle.get_color()
            loss = smoothed(run.record.step_losses, 8)
            bottom.plot(range(1, len(loss) + 1), loss, color=colour, alpha=0.5, linewidth=0.8)
            if run.window_end is not None:
                top.axvline(run.window_end, color=colour, alpha=0.3, linestyle=":")
        mean = [sum(v) / len(v) for v in zip(*curves, strict=True)]
        top.plot(steps, mean, color=colour, linewidth=2, label=f"{label} Gini (mean of {len(curves)} seeds)")
    top.set(
        xscale="log",
        ylabel="Gini coefficient",
        ylim=(0, 1),
        title="Gini along training (dotted: loss first below the threshold)",
    )
    top.legend(fontsize=7)
    bottom.axhline(threshold, color="grey", linestyle=":", label=f"threshold {threshold:g}")
    bottom.set(xscale="log", yscale="log", xlabel="optimizer step", ylabel="training loss (8-step mean)")
    bottom.legend(fontsize=7)
    return _save(figure, path)


def plot_batch_scaling(lsam: SettingSummary, path: Path) -> Path:
    """Figure 4: distribution over training batches of ``ṽ_easy/v_easy`` and ``ṽ_hard/v_hard`` for LSAM, pooled
    over seeds with each seed weighted equally, batches before the loss first falls below the threshold."""
    values: dict[str, list[float]] = {"easy": [], "hard": []}
    weights: list[float] = []
    for run in lsam.runs:
        batches = [b for b in run.record.batch_scaling if run.window_end is None or b[0] < run.window_end]
        for _, easy, hard in batches:
            values["easy"].append(easy)
            values["hard"].append(hard)
            weights.append(1.0 / len(batches))
    figure = Figure(figsize=(6.4, 4.2))
    ax = figure.add_subplot()
    # log2 of the ratio: shrinking by half and growing by two sit symmetrically about 0
    logs = {k: torch.tensor(v).clamp_min(1e-6).log2() for k, v in values.items()}
    pooled = torch.cat(list(logs.values()))
    bins = torch.linspace(float(pooled.min()), float(pooled.max()), 50).numpy()
    for name in ("easy", "hard"):
        median = torch.tensor(values[name]).median().item()
        ax.hist(
            logs[name].numpy(),
            bins=bins,
            weights=weights,
            alpha=0.6,
            label=f"ṽ_{name} / v_{name} (median {median:.2f})",
        )
    ax.axvline(0.0, color="grey", linestyle=":")
    ax.set(
        xlabel="log2(phantom / real head weight on the feature)",
        ylabel="share of a seed's batches (seeds weighted equally)",
        title=f"Figure 4: {lsam.label}, turns={lsam.turns:g}, {len(weights)} batches of {len(lsam.runs)} seeds",
    )
    ax.legend(fontsize=8)
    return _save(figure, path)


def easy_neutral_input(model: SAMClassifier, lo: float = -1.5, hi: float = 1.5, points: int = 601) -> float:
    """The easy-feature value at which the easy branch adds nothing to the logit difference (nearest on a grid).

    Holding the easy feature there leaves the decision to the hard branch alone.
    """
    x = torch.linspace(lo, hi, points)[:, None]
    block = model.body.feature_blocks["easy"]
    direction = model.head.weight[1, block] - model.head.weight[0, block]
    easy_logit = model.body.easy(x) @ direction + (model.head.bias[1] - model.head.bias[0])
    return float(x[easy_logit.abs().argmin(), 0])


@torch.no_grad()
def plot_decision_boundaries(rows: list[list[ToyRunRecord]], path: Path) -> Path:
    """Figure 1 (right): each final model's ``P(y = 1)`` over the hard feature's plane with the easy feature held
    where the easy branch is neutral (:func:`easy_neutral_input`), its 0.5 contour, and the training points.

    Args:
        rows: one row of panels per method, one panel per run (e.g. per seed).
        path: the PNG to write.
    """
    columns = max(len(row) for row in rows)
    figure = Figure(figsize=(2.6 * columns + 1, 2.8 * len(rows) + 0.4), layout="constrained")
    grid = torch.linspace(-1.2, 1.2, 121)
    g1, g2 = torch.meshgrid(grid, grid, indexing="xy")
    levels = torch.linspace(0, 1, 21).numpy()
    image = None
    for i, row in enumerate(rows):
        for j, record in enumerate(row):
            model = toy_model(record.config)
            model.load_state_dict(record.final_state)
            model.eval()
            x_easy = easy_neutral_input(model)
            inputs = torch.stack([torch.full_like(g1, x_easy).flatten(), g1.flatten(), g2.flatten()], dim=1)
            p = model(inputs).softmax(dim=1)[:, 1].reshape(g1.shape)
            datamodule = toy_data(record.config)
            datamodule.setup("fit")
            train = datamodule.train_dataset
            ax = figure.add_subplot(len(rows), columns, i * columns + j + 1)
            image = ax.contourf(g1.numpy(), g2.numpy(), p.numpy(), levels=levels, cmap="RdBu_r", alpha=0.8)
            if float(p.min()) < 0.5 < float(p.max()):
                ax.contour(g1.numpy(), g2.numpy(), p.numpy(), levels=[0.5], colors="k", linewidths=1)
            ax.scatter(train.x[:, 1].numpy(), train.x[:, 2].numpy(), c=train.y.numpy(), cmap="bwr", s=1, alpha=0.3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            ax.set_title(
                f"{record.config.label}, seed {record.config.seed}\n"
                f"x_easy={x_easy:.2f}, hard probe err {record.probe_error['hard']:.2f}",
                fontsize=8,
            )
    if image is not None:
        figure.colorbar(image, ax=figure.axes, label="P(y = 1)", shrink=0.8)
    figure.suptitle("Figure 1 (right): decisions over the hard feature's plane, easy feature held neutral")
    figure.savefig(path, dpi=DPI)
    return path


def plot_margin_weights(panels: list[tuple[str, Tensor, CheckpointWeights]], path: Path, bins: int = 8) -> Path:
    """Figure 5: median importance weight in bins of the easy and hard features' contributions to the margin.

    The contributions cluster (the easy feature takes two tight values), so the bins are quantiles: every row and
    column holds about the same number of examples; the ticks give the bins' lower edges.

    Args:
        panels: ``(title, weights, checkpoint)`` per panel: the weights shown (e.g. SGD's real ``λ``, LSAM's
            phantom ``λ̃``) and the checkpoint whose margin contributions bin them.
        path: the PNG to write.
        bins: quantile bins per axis (fewer where quantiles coincide).
    """
    figure = Figure(figsize=(4.8 * len(panels), 4.4))
    levels = torch.linspace(0, 1, bins + 1)
    for k, (title, weights, point) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        edges = [
            torch.unique(torch.quantile(c.double(), levels.double())).float()
            for c in (point.easy_margin, point.hard_margin)
        ]
        median = binned_median(point.easy_margin, point.hard_margin, weights, edges[0], edges[1])
        image = ax.imshow(
            median.numpy(),
            origin="lower",
            cmap="viridis",
            vmin=0,
            vmax=1,
            aspect="auto",
            extent=(0, len(edges[0]) - 1, 0, len(edges[1]) - 1),
        )
        for axis, e in ((ax.xaxis, edges[0]), (ax.yaxis, edges[1])):
            axis.set_ticks(range(len(e) - 1), [f"{v:.2g}" for v in e[:-1].tolist()], fontsize=7)
        ax.set(
            xlabel="easy feature's margin contribution (quantile bins)",
            ylabel="hard feature's margin contribution (quantile bins)",
            title=title,
        )
        figure.colorbar(image, ax=ax, label="median importance weight")
    return _save(figure, path)
