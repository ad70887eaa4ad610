"""Two-process DDP on CPU: probe results and Gini values equal a one-process run, on every rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_sam.functional import gini_coefficient
from tests.callbacks import ddp_callbacks_fit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict, dict]:
    out = tmp_path_factory.mktemp("ddp_callbacks")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "tests.callbacks.ddp_callbacks_fit", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    one = ddp_callbacks_fit.run(devices=1, root=out / "one")
    one_global_batch = ddp_callbacks_fit.run(devices=1, root=out / "one_global", batch_size=32)
    return ranks[0], ranks[1], one, one_global_batch


def test_two_process_probe_results_are_identical_on_every_rank_and_equal_one_process(runs):
    rank0, rank1, one, _ = runs
    assert rank0["probe_history"] == rank1["probe_history"]
    for name, fields in rank0["probes"].items():
        for a, b, c in zip(fields, rank1["probes"][name], one["probes"][name], strict=True):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), name
                torch.testing.assert_close(a, c, rtol=0, atol=1e-5)
            else:
                assert a == b == c
    for key, value in one["probe_history"][0].items():
        if key.startswith("probe/"):  # exactly the one-process accuracies (the step count differs, of course)
            assert rank0["probe_history"][0][key] == value, key


def test_two_process_gini_equals_one_process(runs):
    rank0, rank1, one, _ = runs
    expected = gini_coefficient(ddp_callbacks_fit.GINI_WEIGHTS).item()
    assert rank0["gini_metric"] == rank1["gini_metric"] == pytest.approx(expected, abs=1e-7)
    assert one["gini_metric"] == pytest.approx(expected, abs=1e-7)
    # real weights do not depend on how the fixed examples are batched: the same Gini on one or two processes
    real = [r["importance_history"][0]["importance/gini_real"] for r in (rank0, rank1, one)]
    assert real[0] == real[1] == pytest.approx(real[2], abs=1e-6)


def test_two_process_phantom_gini_equals_one_process_with_the_global_batch(runs):
    # the global perturbation is formed from the gradient of the global batch (2 x 16): so is the measured one
    rank0, rank1, _, one_global_batch = runs
    phantom = [r["importance_history"][0]["importance/gini_phantom"] for r in (rank0, rank1, one_global_batch)]
    assert phantom[0] == phantom[1] == pytest.approx(phantom[2], abs=1e-6)
