"""SAM, ASAM and LSAM with a sharded body (``ModelParallelStrategy``, FSDP2) on two CPU processes equal one process.

One spawned run of ``tests/lightning_sam/sharded_fit.py`` trains everything the tests compare; the one-process
references run here, on the same global batches.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_sam import SAM, SAMClassifier
from lightning_sam.bodies import ResNetBody, SmallCNN, TwoBranchMLP
from lightning_sam.sharding import shard_units
from tests.lightning_sam import ddp_fit, sharded_fit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sharded")
    result = subprocess.run(
        [sys.executable, "-m", "tests.lightning_sam.sharded_fit", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.parametrize("optimizer", sharded_fit.OPTIMIZERS)
def test_sharded_body_on_two_processes_matches_one_process_with_the_global_batch(two_process_runs, optimizer):
    model = ddp_fit.make_model(optimizer, "global")
    loader = DataLoader(ddp_fit.toy_data(), batch_size=2 * ddp_fit.PER_DEVICE_BATCH, shuffle=False)
    sharded_fit.trainer(1, max_steps=sharded_fit.STEPS).fit(model, loader)
    two = torch.load(two_process_runs / f"{optimizer}.pt", weights_only=True)
    one = model.state_dict()
    assert two.keys() == one.keys()
    initial = ddp_fit.make_model(optimizer, "global").state_dict()
    assert any(not torch.allclose(one[k], initial[k], atol=1e-3) for k in one)  # it trained
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_measurement_after_a_no_grad_forward_perturbs_the_roots_own_parameters(two_process_runs, rank):
    # an FSDP2 root keeps its gathered parameters after a forward without backward (validation): not the optimizer's
    # tensors, so the measurement would have left them out of the phantom point, unlike training
    saved = torch.load(two_process_runs / f"stem_names_rank{rank}.pt", weights_only=True)
    assert "body.scale" in saved["names"]
    assert saved["names"] == saved["all"]


@pytest.mark.parametrize("optimizer", ["sam", "asam"])
def test_importance_weights_on_a_sharded_model_equal_one_process(two_process_runs, optimizer):
    importance, model = sharded_fit.importance_weights(), ddp_fit.make_model(optimizer, "global")
    loader = DataLoader(ddp_fit.toy_data(), batch_size=2 * ddp_fit.PER_DEVICE_BATCH, shuffle=False)
    sharded_fit.trainer(1, max_epochs=1, callbacks=[importance]).fit(model, loader)
    two = torch.load(two_process_runs / f"importance_{optimizer}.pt", weights_only=True)
    history = two["history"]
    assert len(history) == len(importance.history) == 1
    assert history[0].keys() == importance.history[0].keys()
    assert importance.history[0]["importance/gini_phantom"] != importance.history[0]["importance/gini_real"]
    for key, value in importance.history[0].items():
        assert history[0][key] == pytest.approx(value, abs=1e-6), key
    for key, value in model.state_dict().items():  # measuring moved no shard
        torch.testing.assert_close(two["params"][key], value, rtol=0, atol=1e-5, msg=key)


def test_resume_from_the_sharded_checkpoint_continues_exactly(two_process_runs):
    resumed = torch.load(two_process_runs / "resumed.pt", weights_only=True)
    uninterrupted = torch.load(two_process_runs / "uninterrupted.pt", weights_only=True)
    assert resumed["step"] == uninterrupted["step"] == 2 * sharded_fit.EPOCH_STEPS
    assert (two_process_runs / "epoch1.ckpt").is_dir()  # one file per rank, and the metadata
    for key, value in uninterrupted["params"].items():
        assert torch.equal(resumed["params"][key], value), key
    assert uninterrupted["momentum"].keys() == resumed["momentum"].keys() != set()
    for key, state in uninterrupted["momentum"].items():
        assert torch.equal(resumed["momentum"][key]["momentum_buffer"], state["momentum_buffer"]), key


@pytest.mark.parametrize("rank", [0, 1])
def test_an_exception_at_the_phantom_point_leaves_every_shard_at_the_real_point(two_process_runs, rank):
    result = torch.load(two_process_runs / f"exception_rank{rank}.pt", weights_only=True)
    assert result["raised"] == "forced failure at the phantom point"
    assert result["sharded"]
    assert all(name.startswith("body.") for name in result["sharded"])  # the head is whole on every rank
    assert result["before"].keys() == result["after"].keys()
    for name, real in result["before"].items():
        assert torch.equal(result["after"][name], real), name


def test_lsam_ascent_on_a_sharded_head_equals_one_process(two_process_runs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
    head = model[2].weight
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, perturbed_params=[head])
    data = ddp_fit.toy_data(16)
    F.cross_entropy(model(data.x), data.y).backward()
    with sam.phantom_point() as ascent:
        phantom = head.detach().clone()
    two = torch.load(two_process_runs / "sharded_head.pt", weights_only=True)
    torch.testing.assert_close(two["real"], head.detach(), rtol=0, atol=0)
    torch.testing.assert_close(two["phantom"], phantom, rtol=0, atol=1e-6)
    assert two["norm"].item() == pytest.approx(ascent.perturbation_norm.item()) == pytest.approx(0.5)


def test_shard_units_are_resnet_stages_or_child_blocks():
    resnet = ResNetBody(depth=18)
    assert shard_units(resnet) == [getattr(resnet.resnet, f"layer{i}") for i in (1, 2, 3, 4)]
    mlp = TwoBranchMLP(hidden=8)
    assert shard_units(mlp) == [mlp.easy, mlp.hard]
    cnn = SmallCNN()
    assert shard_units(cnn) == [m for m in cnn.features if isinstance(m, nn.Conv2d)]  # through the one Sequential


def test_local_perturbation_is_refused_when_the_body_is_sharded():
    model = SAMClassifier(TwoBranchMLP(hidden=8), optimizer="sam", perturbation="local")
    model._device_mesh = object()  # what ModelParallelStrategy hands the module before configure_model
    with pytest.raises(ValueError, match="perturbation='global' with ModelParallelStrategy"):
        model.configure_model()
    assert not any(hasattr(p, "to_local") for p in model.parameters())
