"""From the grid's run records to the report's numbers: trajectory means, per-setting averages, the three claims.

Claims (issue 5), judged at the default complexity:

1. the mean hard-feature probe error of LSAM at the chosen ``ρ`` is at least ``0.15`` below SGD's;
2. LSAM's phantom Gini is below SGD's real Gini, averaged over the trajectory;
3. LSAM's phantom ratio ``ṽ_hard / ṽ_easy`` exceeds its real ratio ``v_hard / v_easy``, averaged over the trajectory.

"The trajectory" of a run is its measurements before its smoothed training loss first falls below a threshold
(:func:`~lightning_sam.experiments.trajectory.first_step_below`). The LSAM ``ρ`` is chosen on the validation split
only: the best mean validation accuracy, ties (within ``VAL_TIE``) going to the larger ``ρ``. The probe-test split
never chooses anything.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from lightning_sam.experiments.toy_run import ToyRunRecord
from lightning_sam.experiments.trajectory import first_step_below, window_mean

VAL_TIE = 0.005
CLAIM1_MARGIN = 0.15
TRAJECTORY_KEYS = {
    "gini_real": "importance/gini_real",
    "gini_phantom": "importance/gini_phantom",
    "ratio_real": "scaling/ratio_real",
    "ratio_phantom": "scaling/ratio_phantom",
}


@dataclass
class RunSummary:
    """One run reduced to scalars: final numbers and trajectory means (``window_end``: the step the loss fell
    below the threshold, ``None`` if it never did)."""

    record: ToyRunRecord
    window_end: int | None
    trajectory: dict[str, float]


@dataclass
class SettingSummary:
    """Mean and standard deviation over seeds of one (complexity, optimizer, ``ρ``) setting.

    Attributes:
        turns: complexity.
        optimizer: ``"sgd"``, ``"lsam"`` or ``"sam"``.
        rho: perturbation radius (0 for SGD).
        label: ``"SGD"``, ``"LSAM ρ=2"``, ...
        runs: the seeds' summaries.
        mean: quantity -> mean over seeds.
        std: quantity -> standard deviation over seeds (0 for one seed).
    """

    turns: float
    optimizer: str
    rho: float
    label: str
    runs: list[RunSummary]
    mean: dict[str, float]
    std: dict[str, float]


def summarise_run(record: ToyRunRecord, threshold: float) -> RunSummary:
    """Trajectory means of the Gini coefficients and ratios over the steps before the loss falls below
    ``threshold``."""
    end = first_step_below(record.step_losses, threshold)
    steps = [int(m["step"]) for m in record.measurements]
    trajectory = {
        name: window_mean(steps, [m[key] for m in record.measurements], end) for name, key in TRAJECTORY_KEYS.items()
    }
    return RunSummary(record, end, trajectory)


def _scalars(run: RunSummary) -> dict[str, float]:
    r = run.record
    window = float(run.window_end) if run.window_end is not None else float(len(r.step_losses))
    return {
        "probe_hard": r.probe_error["hard"],
        "probe_easy": r.probe_error["easy"],
        "val_acc": r.val_acc,
        "window_end": window,
        **run.trajectory,
    }


def summarise(records: list[ToyRunRecord], threshold: float) -> list[SettingSummary]:
    """Per-setting means over seeds, sorted by complexity, then SGD, LSAM, SAM, then ``ρ``."""
    groups: dict[tuple[float, str, float], list[RunSummary]] = defaultdict(list)
    for record in records:
        c = record.config
        groups[(c.turns, c.optimizer, c.rho if c.optimizer != "sgd" else 0.0)].append(summarise_run(record, threshold))
    order = {"sgd": 0, "lsam": 1, "asam": 2, "sam": 3}
    settings = []
    for (turns, optimizer, rho), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], kv[0][2])):
        table = [_scalars(run) for run in runs]
        keys = table[0].keys()
        mean = {k: statistics.fmean(row[k] for row in table) for k in keys}
        std = {k: statistics.pstdev(row[k] for row in table) if len(table) > 1 else 0.0 for k in keys}
        settings.append(SettingSummary(turns, optimizer, rho, runs[0].record.config.label, runs, mean, std))
    return settings


def find_setting(settings: list[SettingSummary], turns: float, optimizer: str, rho: float = 0.0) -> SettingSummary:
    """The setting with these values (``rho`` ignored for SGD)."""
    for s in settings:
        if s.turns == turns and s.optimizer == optimizer and (optimizer == "sgd" or s.rho == rho):
            return s
    raise KeyError(f"no runs with turns={turns}, optimizer={optimizer}, rho={rho}")


def select_rho(settings: list[SettingSummary], turns: float, optimizer: str = "lsam") -> SettingSummary:
    """The validation choice of ``ρ``: best mean validation accuracy, ties within ``VAL_TIE`` to the larger ``ρ``."""
    candidates = [s for s in settings if s.turns == turns and s.optimizer == optimizer]
    if not candidates:
        raise KeyError(f"no {optimizer} runs at turns={turns}")
    best = max(s.mean["val_acc"] for s in candidates)
    return max((s for s in candidates if s.mean["val_acc"] >= best - VAL_TIE), key=lambda s: s.rho)


@dataclass
class Claim:
    """One claim: whether it held, and the sentence with the numbers."""

    held: bool
    text: str


def judge_claims(settings: list[SettingSummary], turns: float, threshold: float) -> tuple[SettingSummary, list[Claim]]:
    """The chosen LSAM setting at complexity ``turns`` and the verdicts on the three claims."""
    sgd, lsam = find_setting(settings, turns, "sgd"), select_rho(settings, turns)
    n = len(lsam.runs)
    gap = sgd.mean["probe_hard"] - lsam.mean["probe_hard"]
    claim1 = Claim(
        gap >= CLAIM1_MARGIN,
        f"hard-feature probe error: SGD {sgd.mean['probe_hard']:.3f} ± {sgd.std['probe_hard']:.3f}, "
        f"{lsam.label} {lsam.mean['probe_hard']:.3f} ± {lsam.std['probe_hard']:.3f} (mean ± sd over {n} seeds); "
        f"LSAM is {gap:+.3f} below SGD, the claim needs ≥ {CLAIM1_MARGIN}. Easy-feature probe error: SGD "
        f"{sgd.mean['probe_easy']:.3f}, {lsam.label} {lsam.mean['probe_easy']:.3f}; mean validation accuracy: SGD "
        f"{sgd.mean['val_acc']:.3f}, {lsam.label} {lsam.mean['val_acc']:.3f}.",
    )
    g_sgd, g_lsam = sgd.mean["gini_real"], lsam.mean["gini_phantom"]
    below = sum(r.trajectory["gini_phantom"] < g_sgd for r in lsam.runs)
    claim2 = Claim(
        g_lsam < g_sgd,
        f"trajectory-mean Gini (steps before the training loss first falls below {threshold:g}): SGD real "
        f"{g_sgd:.3f} ± {sgd.std['gini_real']:.3f}, {lsam.label} phantom {g_lsam:.3f} ± "
        f"{lsam.std['gini_phantom']:.3f} ({below} of {n} LSAM seeds below SGD's mean); LSAM's own real Gini "
        f"{lsam.mean['gini_real']:.3f}.",
    )
    r_real, r_phantom = lsam.mean["ratio_real"], lsam.mean["ratio_phantom"]
    above = sum(r.trajectory["ratio_phantom"] > r.trajectory["ratio_real"] for r in lsam.runs)
    claim3 = Claim(
        r_phantom > r_real,
        f"{lsam.label}, trajectory means: phantom ṽ_hard/ṽ_easy {r_phantom:.3f} ± {lsam.std['ratio_phantom']:.3f}, "
        f"real v_hard/v_easy {r_real:.3f} ± {lsam.std['ratio_real']:.3f} (phantom above real on {above} of {n} "
        f"seeds); SGD's real ratio {sgd.mean['ratio_real']:.3f}.",
    )
    return lsam, [claim1, claim2, claim3]
