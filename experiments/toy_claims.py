"""The toy study's protocol, fixed before any run, and the verdicts it gives (docs/method.md sections 4, 5 and 8).

:data:`PROTOCOL` is printed at the top of the report, before any number. The functions below apply it to the runs'
records; nothing in them looks at a probe-test number to choose anything (the recommendation of a default ``ρ``
reads only the fit rate and the mechanism statistics).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from experiments.paired_statistics import Interval, bootstrap_ci, sign_test, spearman
from experiments.toy_training import FIT_ACCURACY, LOSS_LEVELS, Cell, Method, RunRecord

DEGENERATE_SHARE = 0.10  # a setting is degenerate when more than this share of its runs end below FIT_ACCURACY
EASY_TOLERANCE = 0.02  # claim 1: the easy probe error may rise at most this much
SEED_SHARE = 0.80  # claims 2 and 3: share of seeds that must agree
MIN_LEVELS = 2  # claim 2: of the len(LOSS_LEVELS) matched-loss levels
MAX_FLIPS = 0.05  # claim 3
RECOMMEND_FIT_RATE = 0.95
PRIMARY = Cell("paper", 1.0, 1)  # python train.py's toy: the headline verdicts are judged here
LORENZ_RHO = 0.2  # the LSAM ρ whose weights Figure 3 draws (also the bias ablation's)

PROTOCOL = f"""\
Fixed before any run; the report generator prints it verbatim.

- **Runs.** Paired seeds: a seed fixes the data, the initialisation and the batch order, the same for every method.
  Settings: toy variant x spiral turns x representation block size k (one *cell* each) x method. Methods: SGD; LSAM
  (head weight perturbed, the paper's form) at every ρ of the grid (LSAM at ρ = 0 is SGD, step for step, so SGD
  stands for it); LSAM with the head bias perturbed too (the ablation) at ρ = {LORENZ_RHO:g}; full SAM at its ρ grid.
  Training: `SAMClassifier`'s defaults (SGD momentum 0.9, lr 0.05 with cosine decay per step, weight decay 5e-4),
  batch 128, 2000 training examples; probes on 2 x 2000 decorrelated examples (docs/method.md section 6).
- **Variants** (chosen before any result, from the paper's setting: the easy feature alone fits the training set;
  the spiral's tightness is the knob): `paper` (docs/method.md section 8, σ_e = 0.1: every example has nearly the same
  easy margin) and `spread` (σ_e = 0 and easy margins uniform over [0.1 μ, μ], `ToyDataModule(easy_spread=0.9)`:
  still linearly separable, but examples differ in how well the easy feature fits them, which importance
  re-weighting needs).
- **Degenerate.** A (cell, method) is degenerate when more than {DEGENERATE_SHARE:.0%} of its runs end below
  {FIT_ACCURACY} training accuracy. It is shown, and used for no claim.
- **Where the claims are judged.** The headline verdicts are those of the `{PRIMARY.label}` cell (`python train.py`'s
  toy). The same rules are applied to every other cell and reported in one table; cells are not pooled and no cell
  is chosen after the fact.
- **Claim 1 (Figure 2A): LSAM learns the hard feature better.** Per LSAM ρ, the paired differences LSAM − SGD of the
  final hard- and easy-feature probe errors: mean with a 95 % percentile-bootstrap interval and an exact sign test.
  Holds if at some non-degenerate ρ the hard difference's interval lies below 0 and the easy difference's mean is at
  most {EASY_TOLERANCE}. Every ρ is shown; none is selected.
- **Claim 2 (Figure 3): the phantom importance weights are more even.** At matched training loss L ∈
  {list(LOSS_LEVELS)}: each run is measured at the first step at which its full-training-set loss is ≤ L (the
  training-set batches' own phantom heads, as in training). Primary: the phantom Gini below the same model's real
  Gini, overall *and* within class (difference phantom − real). Secondary: LSAM's phantom Gini below SGD's real Gini
  at the same L (paired by seed). A comparison holds at a level if at least {SEED_SHARE:.0%} of all seeds (a seed that
  never reaches L counts against) have a negative difference and the paired interval lies below 0; it holds at a ρ if
  it holds at ≥ {MIN_LEVELS} of the {len(LOSS_LEVELS)} levels. The claim holds if the primary comparison holds at every
  non-degenerate LSAM ρ > 0; the secondary is reported the same way.
- **Claim 3 (Figures 2B, 4): the phantom speeds the hard feature relative to the easy one.** Per batch the relative
  gain ℓ = log(r_hard / r_easy) of the centred head and whether the phantom flips a feature (docs/method.md section
  5); per run the median ℓ before the fit (the first step with training accuracy ≥ {FIT_ACCURACY}; all steps if never)
  and after it, and the flip rate over all steps. Holds if at every non-degenerate LSAM ρ > 0, ℓ before the fit is > 0
  on ≥ {SEED_SHARE:.0%} of seeds and the mean flip rate is < {MAX_FLIPS:.0%}, and ℓ increases with ρ (Spearman
  correlation of ρ and the per-run ℓ over those runs > 0).
- **Recommended default LSAM ρ for `python train.py` on the toy**: the largest LSAM ρ of the `{PRIMARY.label}` cell
  whose runs fit at a rate ≥ {RECOMMEND_FIT_RATE:.0%}, with ℓ > 0 on ≥ {SEED_SHARE:.0%} of seeds and a mean flip rate
  < {MAX_FLIPS:.0%}. Probe-test numbers play no part in it.
- **Figures** show every seed and the medians (never mean ± sd: outcomes can be bimodal); mid-run comparisons are at
  matched training loss, never at the same step.
"""


def fit_rate(runs: Sequence[RunRecord]) -> float:
    """Share of runs that end at or above ``FIT_ACCURACY`` training accuracy."""
    return sum(r.train_acc >= FIT_ACCURACY for r in runs) / len(runs)


def is_degenerate(runs: Sequence[RunRecord]) -> bool:
    """More than ``DEGENERATE_SHARE`` of the runs end below ``FIT_ACCURACY`` training accuracy."""
    return 1 - fit_rate(runs) > DEGENERATE_SHARE


def by_method(records: Sequence[RunRecord], cell: Cell) -> dict[Method, list[RunRecord]]:
    """The cell's runs per method, each list sorted by seed."""
    out: dict[Method, list[RunRecord]] = {}
    for r in records:
        if r.cell == cell:
            out.setdefault(r.method, []).append(r)
    return {m: sorted(v, key=lambda r: r.seed) for m, v in out.items()}


def lsam_methods(methods: Sequence[Method], head_bias: bool = False) -> list[Method]:
    """The LSAM methods (weight-only by default), by ``ρ``."""
    return sorted((m for m in methods if m.optimizer == "lsam" and m.head_bias == head_bias), key=lambda m: m.rho)


def _sgd(groups: dict[Method, list[RunRecord]]) -> list[RunRecord]:
    return groups[Method("sgd")]


def paired(a: Sequence[RunRecord], b: Sequence[RunRecord], value) -> list[float]:
    """``value(a) − value(b)`` per seed both have."""
    other = {r.seed: r for r in b}
    return [value(r) - value(other[r.seed]) for r in a if r.seed in other]


@dataclass
class Comparison:
    """Paired differences of one quantity between two methods (or two points of one model)."""

    interval: Interval
    p_sign: float
    negative: int  # seeds with a difference < 0
    seeds: int  # all seeds of the setting (missing differences count as not negative)

    @property
    def below_zero(self) -> bool:
        """The whole interval lies below 0."""
        return self.interval.high < 0

    def text(self, digits: int = 3) -> str:
        """``mean [low, high], n/N < 0, sign p``."""
        i = self.interval
        return (
            f"{i.mean:+.{digits}f} [{i.low:+.{digits}f}, {i.high:+.{digits}f}], "
            f"{self.negative}/{self.seeds} < 0, sign p = {self.p_sign:.2g}"
        )


def compare(differences: Sequence[float], seeds: int) -> Comparison:
    """Bootstrap interval, sign test and count of negative differences."""
    finite = [d for d in differences if math.isfinite(d)]
    return Comparison(bootstrap_ci(finite), sign_test(finite), sum(d < 0 for d in finite), seeds)


@dataclass
class Verdict:
    """A claim's verdict in one cell, its one-line summary and a Markdown table of its numbers."""

    held: bool
    summary: str
    table: list[list[str]]
    header: list[str]


def claim1(records: Sequence[RunRecord], cell: Cell) -> Verdict:
    """Hard- and easy-probe error, LSAM − SGD, per ρ (SAM and the bias ablation shown, not judged)."""
    groups = by_method(records, cell)
    sgd = _sgd(groups)
    rows, passing = [], []
    for m in [*lsam_methods(list(groups)), *lsam_methods(list(groups), True), *_sam(list(groups))]:
        runs = groups[m]
        hard = compare(paired(runs, sgd, lambda r: r.probe_hard), len(runs))
        easy = compare(paired(runs, sgd, lambda r: r.probe_easy), len(runs))
        degenerate = is_degenerate(runs)
        judged = m.optimizer == "lsam" and not m.head_bias and not degenerate
        ok = judged and hard.below_zero and easy.interval.mean <= EASY_TOLERANCE
        if ok:
            passing.append(m)
        status = "degenerate" if degenerate else ("judged" if judged else "shown")
        rows.append([m.label, f"{fit_rate(runs):.0%}", status, hard.text(), easy.text(), "yes" if ok else "no"])
    held = bool(passing)
    best = min(
        (row for row in rows if row[2] == "judged"),
        key=lambda row: float(row[3].split()[0]),
        default=None,
    )
    if held:
        summary = "passes at " + ", ".join(m.label for m in passing)
    elif best is None:
        summary = "no non-degenerate LSAM ρ"
    else:
        summary = f"closest: {best[0]}, hard-probe error difference {best[3]}"
    header = ["method", "fit rate", "status", "hard probe err. − SGD", "easy probe err. − SGD", "passes"]
    return Verdict(held, summary, rows, header)


def _sam(methods: Sequence[Method]) -> list[Method]:
    return sorted((m for m in methods if m.optimizer == "sam"), key=lambda m: m.rho)


def _level_value(run: RunRecord, level: float, key: str) -> float:
    measured = run.levels.get(level)
    return getattr(measured, key) if measured is not None else math.nan


def claim2(records: Sequence[RunRecord], cell: Cell) -> tuple[Verdict, Verdict]:
    """(primary, secondary) verdicts: phantom vs own real Gini (overall and within class); LSAM phantom vs SGD real."""
    groups = by_method(records, cell)
    sgd = {r.seed: r for r in _sgd(groups)}
    primary_rows, secondary_rows = [], []
    primary_ok, secondary_ok, judged = [], [], []
    for m in [*lsam_methods(list(groups)), *lsam_methods(list(groups), True)]:
        runs = groups[m]
        degenerate = is_degenerate(runs)
        counts = {"overall": 0, "within": 0, "secondary": 0}
        for level in LOSS_LEVELS:
            overall = compare(
                [_level_value(r, level, "gini_phantom") - _level_value(r, level, "gini_real") for r in runs], len(runs)
            )
            within = compare(
                [_level_value(r, level, "within_phantom") - _level_value(r, level, "within_real") for r in runs],
                len(runs),
            )
            across = compare(
                [
                    _level_value(r, level, "gini_phantom") - _level_value(sgd[r.seed], level, "gini_real")
                    for r in runs
                    if r.seed in sgd
                ],
                len(runs),
            )
            for name, c in (("overall", overall), ("within", within), ("secondary", across)):
                counts[name] += c.below_zero and c.negative >= SEED_SHARE * c.seeds
            primary_rows.append([m.label, f"{level:g}", overall.text(), within.text()])
            secondary_rows.append([m.label, f"{level:g}", across.text()])
        if m.head_bias or degenerate:
            continue
        judged.append(m)
        if counts["overall"] >= MIN_LEVELS and counts["within"] >= MIN_LEVELS:
            primary_ok.append(m)
        if counts["secondary"] >= MIN_LEVELS:
            secondary_ok.append(m)
    verdicts = []
    for ok, rows, header in (
        (primary_ok, primary_rows, ["method", "L", "Gini phantom − real (overall)", "... within class"]),
        (secondary_ok, secondary_rows, ["method", "L", "LSAM phantom Gini − SGD real Gini"]),
    ):
        held = bool(judged) and len(ok) == len(judged)
        failing = [m.label for m in judged if m not in ok]
        passing = f"passes at {len(ok)} of {len(judged)} non-degenerate LSAM ρ"
        summary = passing + (f"; fails at {', '.join(failing)}" if failing else "") if judged else "no non-degenerate ρ"
        verdicts.append(Verdict(held, summary, rows, header))
    return verdicts[0], verdicts[1]


def claim3(records: Sequence[RunRecord], cell: Cell) -> Verdict:
    """Relative gain ℓ > 0, rising with ρ, few flips."""
    groups = by_method(records, cell)
    rows, failing, points = [], [], []
    for m in [*lsam_methods(list(groups)), *lsam_methods(list(groups), True), *_sam(list(groups))]:
        runs = groups[m]
        degenerate = is_degenerate(runs)
        before = [r.ell_before for r in runs]
        after = [r.ell_after for r in runs if math.isfinite(r.ell_after)]
        positive = sum(v > 0 for v in before)
        flips = statistics.fmean(r.flip_rate for r in runs)
        judged = m.optimizer == "lsam" and not m.head_bias and not degenerate
        ok = positive >= SEED_SHARE * len(runs) and flips < MAX_FLIPS
        if judged:
            points += [(m.rho, v) for v in before]
            if not ok:
                failing.append(m.label)
        rows.append(
            [
                m.label,
                "degenerate" if degenerate else ("judged" if judged else "shown"),
                f"{_med(before):+.3f}",
                f"{_med(after):+.3f}" if after else "–",
                f"{positive}/{len(runs)}",
                f"{flips:.1%}",
                f"{_med([r.rho_over_head for r in runs]):.2f}",
                f"{_med([r.fit_step for r in runs if r.fit_step is not None]):.0f}"
                if any(r.fit_step for r in runs)
                else "–",
            ]
        )
    rank = spearman([p[0] for p in points], [p[1] for p in points]) if points else math.nan
    held = bool(points) and not failing and rank > 0
    reasons = []
    if not points:
        reasons.append("no non-degenerate LSAM ρ")
    if failing:
        reasons.append(f"ℓ > 0 on < {SEED_SHARE:.0%} of seeds or flips ≥ {MAX_FLIPS:.0%} at {', '.join(failing)}")
    if not rank > 0:
        reasons.append("ℓ does not rise with ρ")
    summary = f"Spearman(ρ, ℓ) = {rank:.2f}" + ("; " + "; ".join(reasons) if reasons else "")
    header = ["method", "status", "median ℓ before fit", "median ℓ after", "ℓ > 0", "flips", "ρ/‖W_c‖", "fit step"]
    return Verdict(held, summary, rows, header)


def _med(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def recommend_rho(records: Sequence[RunRecord], cell: Cell = PRIMARY) -> tuple[Method | None, str]:
    """The recommended default LSAM ``ρ`` and why (fit rate and mechanism statistics only)."""
    groups = by_method(records, cell)
    eligible, notes = [], []
    for m in lsam_methods(list(groups)):
        runs = groups[m]
        rate = fit_rate(runs)
        positive = sum(r.ell_before > 0 for r in runs) / len(runs)
        flips = statistics.fmean(r.flip_rate for r in runs)
        ok = rate >= RECOMMEND_FIT_RATE and positive >= SEED_SHARE and flips < MAX_FLIPS
        notes.append(f"ρ = {m.rho:g}: fit {rate:.0%}, ℓ > 0 on {positive:.0%}, flips {flips:.1%}")
        if ok:
            eligible.append(m)
    choice = max(eligible, key=lambda m: m.rho, default=None)
    head = f"ρ = {choice.rho:g}" if choice else "none of the grid"
    return choice, f"{head} ({'; '.join(notes)})"
