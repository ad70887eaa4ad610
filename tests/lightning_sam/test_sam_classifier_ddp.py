"""Two-process DDP on CPU: the global perturbation equals one process with the global batch; local does not."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.lightning_sam import ddp_fit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.lightning_sam.ddp_fit", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _one_process(optimizer: str, perturbation: str) -> dict[str, torch.Tensor]:
    model = ddp_fit.make_model(optimizer, perturbation)
    data = DataLoader(ddp_fit.toy_data(), batch_size=2 * ddp_fit.PER_DEVICE_BATCH, shuffle=False)
    ddp_fit.trainer(devices=1).fit(model, data)
    return model.state_dict()


@pytest.mark.parametrize("name", ["lsam-global", "sam-global"])
def test_global_perturbation_on_two_processes_matches_one_process(two_process_runs, name):
    optimizer, perturbation = ddp_fit.RUNS[name]
    two = torch.load(two_process_runs / f"{name}.pt", weights_only=True)
    one = _one_process(optimizer, perturbation)
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=0, atol=1e-5, msg=key)


def test_local_perturbation_differs_from_global(two_process_runs):
    local = torch.load(two_process_runs / "sam-local.pt", weights_only=True)
    one = _one_process("sam", "global")
    assert all(torch.isfinite(v).all() for v in local.values())
    largest = max((local[k] - v).abs().max().item() for k, v in one.items() if v.is_floating_point())
    assert largest > 1e-4
