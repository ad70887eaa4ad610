"""Reproduce the paper's mechanism on the toy in one command: a grid of runs, the figures and a report.

    python -m lightning_sam.experiments.toy            # the default grid, <= 20 minutes on two CPU cores
    python -m lightning_sam.experiments.toy --quick    # a smaller grid, about 3 minutes

Trains the toy (METHOD.md section 8) over complexities (``turns``) x ``ρ`` (0 = SGD, several LSAM values, full SAM
at one or two) x seeds, in parallel worker processes, and writes ``<out>/toy_report.md`` with PNG figures after the
paper's Figures 1 (right), 2A, 2B, 3, 4 and 5, a table of the measured numbers and the verdicts on the claims of
issue 5 (see :mod:`lightning_sam.experiments.toy_summary`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lightning_sam.experiments.checkpoint_weights import checkpoint_weights
from lightning_sam.experiments.toy_figures import (
    plot_batch_scaling,
    plot_decision_boundaries,
    plot_gini_trajectory,
    plot_lorenz,
    plot_margin_weights,
    plot_probe_error,
    plot_scaling_ratios,
)
from lightning_sam.experiments.toy_report import write_report, write_runs_csv
from lightning_sam.experiments.toy_run import ToyRunConfig, ToyRunRecord, train_toy_run
from lightning_sam.experiments.toy_summary import RunSummary, find_setting, judge_claims, summarise


@dataclass(frozen=True)
class ToyGrid:
    """The runs of one experiment and how they are judged.

    Args:
        turns: the complexities.
        default_turns: the complexity the claims are judged at (``train.py``'s default).
        lsam_rhos: LSAM's radii (SGD, ``ρ = 0``, always runs).
        sam_rhos: full SAM's radii.
        seeds: one run per seed and setting.
        epochs: training epochs per run.
        n_train: training examples.
        n_probe: examples per probe split.
        hidden: width of the body's branches.
        measure_examples: training examples the Gini coefficients and ratios are measured on.
        loss_threshold: the trajectory ends when the 8-step-mean training loss first falls below this.
    """

    turns: tuple[float, ...] = (0.5, 1.0, 2.0)
    default_turns: float = 1.0
    lsam_rhos: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    sam_rhos: tuple[float, ...] = (0.05, 0.2)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 60
    n_train: int = 2000
    n_probe: int = 2000
    hidden: int = 64
    measure_examples: int = 1024
    loss_threshold: float = 0.05

    def configs(self) -> list[ToyRunConfig]:
        """Every run; the first seed's runs at the default complexity keep their weights along the way."""
        if self.default_turns not in self.turns:
            raise ValueError(f"default_turns={self.default_turns} must be one of turns={self.turns}")
        methods = [("sgd", 0.0)] + [("lsam", r) for r in self.lsam_rhos] + [("sam", r) for r in self.sam_rhos]
        return [
            ToyRunConfig(
                turns=turns,
                optimizer=optimizer,
                rho=rho,
                seed=seed,
                epochs=self.epochs,
                n_train=self.n_train,
                n_probe=self.n_probe,
                hidden=self.hidden,
                measure_examples=self.measure_examples,
                keep_snapshots=turns == self.default_turns and seed == self.seeds[0],
            )
            for turns in self.turns
            for optimizer, rho in methods
            for seed in self.seeds
        ]


GRIDS: dict[str, ToyGrid] = {
    "default": ToyGrid(),
    "quick": ToyGrid(lsam_rhos=(1.0, 2.0, 3.0), sam_rhos=(0.2,), seeds=(0, 1, 2), epochs=20),
}


def run_grid(configs: Sequence[ToyRunConfig], workers: int) -> list[ToyRunRecord]:
    """Trains every config, in ``workers`` processes (in this process when ``workers`` is 1)."""
    # full SAM costs two passes per step: start those first so that the workers finish together
    order = sorted(range(len(configs)), key=lambda i: configs[i].optimizer != "sam")
    if workers <= 1:
        records = {i: train_toy_run(configs[i]) for i in order}
    else:
        context = multiprocessing.get_context("spawn")  # no forked Lightning/torch state in the workers
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            records = dict(zip(order, pool.map(train_toy_run, [configs[i] for i in order]), strict=True))
    return [records[i] for i in range(len(configs))]


def mid_trajectory_step(run: RunSummary) -> int:
    """The snapshot step nearest half-way to the step the loss fell below the threshold (or to the end)."""
    steps = sorted(run.record.snapshots)
    if not steps:
        raise ValueError(f"run {run.record.config} kept no snapshots")
    end = run.window_end if run.window_end is not None else len(run.record.step_losses)
    return min(steps, key=lambda s: (abs(s - end / 2), s))


def run_toy_experiment(grid: ToyGrid, out: Path, workers: int = 2, command: str = "") -> Path:
    """Runs ``grid`` and writes the report, its figures and the per-run CSV into ``out``; returns the report."""
    start = time.perf_counter()
    records = run_grid(grid.configs(), workers)
    return write_toy_report(grid, records, out, command, (time.perf_counter() - start) / 60, workers)


def write_toy_report(
    grid: ToyGrid, records: list[ToyRunRecord], out: Path, command: str, minutes: float, workers: int
) -> Path:
    """Summarises the grid's ``records``, draws the figures and writes the report and the per-run CSV."""
    out.mkdir(parents=True, exist_ok=True)
    figures_dir = out / "toy_figures"
    figures_dir.mkdir(exist_ok=True)
    tau = grid.loss_threshold
    settings = summarise(records, tau)
    chosen, claims = judge_claims(settings, grid.default_turns, tau)
    sgd = find_setting(settings, grid.default_turns, "sgd")
    sgd_run, lsam_run = sgd.runs[0], chosen.runs[0]  # the first seed: the one with snapshots
    sgd_step, lsam_step = mid_trajectory_step(sgd_run), mid_trajectory_step(lsam_run)
    n = grid.measure_examples
    sgd_mid = checkpoint_weights(sgd_run.record.config, sgd_run.record.snapshots[sgd_step], n)
    lsam_mid = checkpoint_weights(lsam_run.record.config, lsam_run.record.snapshots[lsam_step], n)
    sgd_end = checkpoint_weights(sgd_run.record.config, sgd_run.record.final_state, n)
    lsam_end = checkpoint_weights(lsam_run.record.config, lsam_run.record.final_state, n)
    seed = sgd_run.record.config.seed

    figures = [
        (
            "Figure 2A: hard-feature probe error against ρ",
            plot_probe_error(settings, figures_dir / "fig2a_probe_error.png"),
            "Mean ± sd over seeds of the hard feature's linear-probe error (probe-test split, end of training). "
            "ρ = 0 is SGD; lines are LSAM, hollow squares full SAM (whose ρ perturbs all parameters, so its scale "
            "differs).",
        ),
        (
            "Figure 2B: learning-rate scaling against ρ",
            plot_scaling_ratios(settings, figures_dir / "fig2b_scaling_ratios.png"),
            "Trajectory means of the phantom ratio ṽ_hard/ṽ_easy (solid) and the real ratio v_hard/v_easy "
            "(dashed), LSAM and SGD (ρ = 0, where both coincide).",
        ),
        (
            "Figure 3: Lorenz curves of the importance weights",
            plot_lorenz(
                [
                    (f"mid-trajectory (SGD step {sgd_step}, LSAM step {lsam_step})", sgd_mid, lsam_mid),
                    ("end of training", sgd_end, lsam_end),
                ],
                figures_dir / "fig3_lorenz.png",
            ),
            f"Seed {seed}, turns={grid.default_turns:g}: SGD's real weights λ and {chosen.label}'s phantom weights "
            "λ̃ on the fixed measuring examples, half-way along each run's trajectory (left) and at the end "
            "(right). At the end the float32 weights of fitted examples are exactly 0; an all-zero set of "
            "weights is drawn as the diagonal (Gini 0), which means 'no weight left', not 'even'.",
        ),
        (
            "Figure 3 (dynamics): Gini along training",
            plot_gini_trajectory(sgd, chosen, tau, figures_dir / "fig3_gini_trajectory.png"),
            f"Gini of SGD's real and {chosen.label}'s phantom weights at every measured step (log scale), and the "
            f"8-step-mean training loss; dotted verticals mark where each run's loss first falls below τ = {tau:g}.",
        ),
        (
            "Figure 4: per-batch phantom scaling of each feature",
            plot_batch_scaling(chosen, figures_dir / "fig4_batch_scaling.png"),
            f"{chosen.label}, turns={grid.default_turns:g}, all seeds: for every training batch before the loss "
            "falls below τ, the head's phantom weight on each feature over its real weight. Below 1: the phantom "
            "head reads the feature less.",
        ),
        (
            "Figure 1 (right): decision boundaries over the hard feature",
            plot_decision_boundaries(
                [[run.record for run in sgd.runs], [run.record for run in chosen.runs]],
                figures_dir / "fig1_decision_boundaries.png",
            ),
            f"Every seed's final SGD (top) and {chosen.label} (bottom) model at turns={grid.default_turns:g}, over "
            "the plane of the hard (spiral) feature, with the easy feature held where the model's easy branch adds "
            "nothing to the logit difference (so the hard branch alone decides); dots are training points coloured "
            "by label, the black line (where there is one) is P(y=1) = 0.5.",
        ),
        (
            "Figure 5: importance weight against the features' margin contributions",
            plot_margin_weights(
                [
                    (f"SGD real λ, step {sgd_step}", sgd_mid.real, sgd_mid),
                    (f"{chosen.label} phantom λ̃, step {lsam_step}", lsam_mid.phantom, lsam_mid),
                    (f"{chosen.label} real λ, step {lsam_step}", lsam_mid.real, lsam_mid),
                ],
                figures_dir / "fig5_margin_weights.png",
            ),
            "Median importance weight of the measuring examples in bins of the easy and the hard feature's "
            "contributions to the real margin, at the mid-trajectory checkpoints of Figure 3.",
        ),
    ]
    write_runs_csv(settings, out / "toy_runs.csv")
    setup = [
        f"Complexities turns ∈ {list(grid.turns)}; claims judged at turns = {grid.default_turns:g}.",
        f"Methods: SGD (ρ = 0), LSAM ρ ∈ {list(grid.lsam_rhos)}, full SAM ρ ∈ {list(grid.sam_rhos)}; "
        f"seeds {list(grid.seeds)} (each seed sets the data, the initialisation and the batch order).",
        f"Training: `TwoBranchMLP(hidden={grid.hidden})` + linear head, `SAMClassifier` defaults (SGD momentum 0.9, "
        f"lr 0.05 with cosine decay, weight decay 5e-4), batch 128, n_train {grid.n_train}, {grid.epochs} epochs "
        f"(`python train.py` trains 60); probes on 2 × {grid.n_probe} decorrelated examples.",
        f"Trajectory: Gini coefficients and ratios measured by `ImportanceWeights` and `LearningRateScaling` on "
        f"{grid.measure_examples} fixed training examples at every step up to 16, then at steps growing by 25%; "
        f"the trajectory ends at the first step whose 8-step-mean training loss is below τ = {tau:g} "
        "(SGD reaches it within the first epoch).",
        "Choice of LSAM's ρ: on the validation split only: best mean validation accuracy, ties within 0.005 to the "
        f"larger ρ. Chosen: {chosen.label} (mean validation accuracy {chosen.mean['val_acc']:.3f}). The probe-test "
        "split chooses nothing.",
    ]
    return write_report(out, command, setup, settings, chosen, claims, figures, minutes, workers)


def main(argv: Sequence[str] | None = None) -> Path:
    """The command line: ``[--quick] [--out DIR] [--workers N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smaller grid (about 3 minutes on two cores)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where the report and figures go")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (two CPU cores: 2)")
    args = parser.parse_args(argv)
    grid = GRIDS["quick" if args.quick else "default"]
    command = "python -m lightning_sam.experiments.toy" + (" --quick" if args.quick else "")
    if args.out != Path("docs"):
        command += f" --out {args.out}"
    report = run_toy_experiment(grid, args.out, args.workers, command)
    print(f"Wrote {report}")
    return report


if __name__ == "__main__":
    main()
