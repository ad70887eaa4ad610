"""The toy experiment end to end on a tiny grid: the report, every figure and the table of measured numbers."""

import csv
import re

import pytest

from lightning_sam.experiments.toy import ToyGrid, main, run_toy_experiment
from lightning_sam.experiments.toy_run import ToyRunConfig, ToyRunRecord
from lightning_sam.experiments.toy_summary import find_setting, judge_claims, select_rho, summarise

TINY = ToyGrid(
    turns=(1.0, 2.0),
    lsam_rhos=(2.0,),
    sam_rhos=(1.0,),
    seeds=(0,),
    epochs=1,
    n_train=256,
    n_probe=128,
    hidden=8,
    measure_examples=128,
)
FIGURES = (
    "fig1_decision_boundaries.png",
    "fig2a_probe_error.png",
    "fig2b_scaling_ratios.png",
    "fig3_lorenz.png",
    "fig3_gini_trajectory.png",
    "fig4_batch_scaling.png",
    "fig5_margin_weights.png",
)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    (out / "toy_report_discussion.md").write_text("Hand-written: why claim 2 failed.")
    return out, run_toy_experiment(TINY, out, workers=1, command="python -m lightning_sam.experiments.toy --tiny")


def test_tiny_grid_writes_the_report_every_figure_and_the_runs_csv(tiny_report):
    out, report = tiny_report
    assert report == out / "toy_report.md"
    text = report.read_text()
    for name in FIGURES:
        path = out / "toy_figures" / name
        assert path.stat().st_size > 1000, name
        assert f"](toy_figures/{name})" in text, name
    assert "python -m lightning_sam.experiments.toy --tiny" in text
    assert len(re.findall(r"\*\*.*: (held|did not hold)\.\*\*", text)) == 3
    with (out / "toy_runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(TINY.configs()) == 2 * 3


def test_report_table_holds_the_measured_means(tiny_report):
    out, report = tiny_report
    with (out / "toy_runs.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["turns"] == "1.0" and r["optimizer"] == "lsam"]
    mean_hard = sum(float(r["probe_hard"]) for r in rows) / len(rows)
    mean_gini = sum(float(r["gini_phantom"]) for r in rows) / len(rows)
    line = next(line for line in report.read_text().splitlines() if line.startswith("| 1 | LSAM ρ=2 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3].startswith(f"{mean_hard:.3f} ± ")
    assert cells[8].startswith(f"{mean_gini:.3f} ± ")


def test_hand_written_discussion_is_included_verbatim(tiny_report):
    _, report = tiny_report
    assert "## Discussion\n\nHand-written: why claim 2 failed." in report.read_text()


def _record(optimizer, rho, seed, val_acc, probe_hard, losses, gini_phantom):
    config = ToyRunConfig(optimizer=optimizer, rho=rho, seed=seed)
    measurements = [
        {"step": float(s), "importance/gini_real": 0.5, "importance/gini_phantom": g, "scaling/ratio_real": 1.0,
         "scaling/ratio_phantom": 2.0}
        for s, g in zip((1, 5, 20, 30), gini_phantom, strict=True)
    ]  # fmt: skip
    return ToyRunRecord(config, val_acc, 0.1, {"easy": 0.0, "hard": probe_hard}, losses, measurements)


def test_rho_is_chosen_on_validation_accuracy_with_ties_to_the_larger_rho():
    records = [
        _record("sgd", 0.0, 0, 1.0, 0.45, [1.0] * 4, [0.5] * 4),
        _record("lsam", 1.0, 0, 0.999, 0.40, [1.0] * 4, [0.5] * 4),
        _record("lsam", 2.0, 0, 0.997, 0.30, [1.0] * 4, [0.5] * 4),  # within the tie margin: the larger ρ wins
        _record("lsam", 3.0, 0, 0.90, 0.01, [1.0] * 4, [0.5] * 4),  # best probe error, but worse validation
    ]
    chosen = select_rho(summarise(records, threshold=0.05), turns=1.0)
    assert chosen.rho == 2.0


def test_claims_are_judged_on_the_trajectory_before_the_loss_threshold():
    # the 8-step-mean loss first falls below 0.05 at step 10: only the measurements at steps 1 and 5 count
    fit_fast = [1.0, 1.0] + [0.0] * 30
    records = [
        _record("sgd", 0.0, 0, 1.0, 0.45, fit_fast, [0.5] * 4),
        _record("lsam", 2.0, 0, 1.0, 0.20, fit_fast, [0.2, 0.2, 0.9, 0.9]),
    ]
    settings = summarise(records, threshold=0.05)
    lsam = find_setting(settings, 1.0, "lsam", 2.0)
    assert lsam.runs[0].window_end == 10
    assert lsam.mean["gini_phantom"] == pytest.approx(0.2)
    chosen, (claim1, claim2, claim3) = judge_claims(settings, 1.0, threshold=0.05)
    assert chosen is lsam
    assert (claim1.held, claim2.held, claim3.held) == (True, True, True)
    assert "0.450" in claim1.text and "0.200" in claim1.text


def test_cli_rejects_unknown_flags():
    with pytest.raises(SystemExit):
        main(["--no-such-flag"])
