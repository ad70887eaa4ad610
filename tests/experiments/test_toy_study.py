"""The toy study end to end on a tiny study: runs, the report (protocol first), the CSV and the figures."""

import csv

import pytest
import torch

from experiments.toy import Study, main, run_study
from experiments.toy_claims import PROTOCOL
from experiments.toy_training import LOSS_LEVELS, Training

TINY = Study(
    variants=("paper",),
    turns=(1.0,),
    block_sizes=(1,),
    lsam_rhos=(0.2,),
    sam_rhos=(0.05,),
    seeds=(0, 1),
    training=Training(epochs=12, batch_size=32, n_train=256, n_val=64, n_probe=128, hidden=16),
)
FIGURES = (
    "fig2a_probe_error.png",
    "fig2a_probe_error_cells.png",
    "fig2b_relative_gain.png",
    "fig3_lorenz.png",
    "fig3_gini_levels.png",
    "fig4_relative_gain_trace.png",
)


@pytest.fixture(scope="module")
def records():
    return run_study(TINY, workers=1)


def test_tiny_study_trains_every_method_and_seed(records):
    assert len(records) == len(TINY.methods()) * len(TINY.seeds) == 8
    assert {(r.method.label, r.seed) for r in records} == {(m.label, s) for m in TINY.methods() for s in TINY.seeds}
    sgd = [r for r in records if r.method.optimizer == "sgd"]
    assert all(r.ell_before == 0 and r.flip_rate == 0 for r in sgd)  # SGD's phantom is its real point


def test_matched_loss_levels_are_measured_at_or_below_the_level(records):
    measured = [(level, m) for r in records for level, m in r.levels.items()]
    assert measured, "no run reached any loss level"
    assert all(m.loss <= level for level, m in measured)
    for r in records:
        steps = [r.levels[level].step for level in LOSS_LEVELS if level in r.levels]
        assert steps == sorted(steps)


def test_command_writes_the_report_protocol_first_from_saved_runs(records, tmp_path):
    saved, out = tmp_path / "runs.pt", tmp_path / "docs"
    torch.save({"records": records, "minutes": 0.5}, saved)
    stale = out / "toy_figures" / "fig1_old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    report = main(["--out", str(out), "--records", str(saved)])
    text = report.read_text()
    assert report == out / "toy_report.md"
    assert text.index(PROTOCOL) < text.index("## Verdicts")
    assert f"python -m experiments.toy --out {out}" in text
    assert not stale.exists()
    for name in FIGURES:
        assert (out / "toy_figures" / name).stat().st_size > 1000, name
        assert f"](toy_figures/{name})" in text
    with (out / "toy_runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    assert {row["optimizer"] for row in rows} == {"sgd", "lsam", "sam"}
