"""``SAM.step(closure)``: the whole SAM step for plain PyTorch loops, on tiny analytic problems."""

import copy

import pytest
import torch
from torch import nn

from lightning_sam import SAM


def _problem(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(3, 2), torch.randn(8, 3), torch.randn(8, 2)


def _closure(model: nn.Module, sam: SAM, x: torch.Tensor, t: torch.Tensor, calls: list | None = None):
    def closure() -> torch.Tensor:
        sam.zero_grad()
        loss = ((model(x) - t) ** 2).mean()
        loss.backward()
        if calls is not None:
            calls.append(loss.detach())
        return loss

    return closure


def _sgd_sam(model: nn.Module, rho: float = 0.3, **kwargs) -> SAM:
    return SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3), rho=rho, **kwargs)


@pytest.mark.parametrize("adaptive", [False, True])
def test_closure_step_equals_the_ascend_restore_step_sequence(adaptive):
    model, x, t = _problem()
    twin = copy.deepcopy(model)
    sam, manual = _sgd_sam(model, adaptive=adaptive), _sgd_sam(twin, adaptive=adaptive)
    for _ in range(3):  # momentum carries over between steps
        sam.step(_closure(model, sam, x, t))
        manual_closure = _closure(twin, manual, x, t)
        manual_closure()
        with manual.phantom_point():
            manual_closure()
        manual.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_closure_step_returns_the_loss_at_the_real_parameters_and_runs_the_closure_twice():
    model, x, t = _problem()
    sam = _sgd_sam(model)
    with torch.no_grad():
        at_real = ((model(x) - t) ** 2).mean()
    calls: list[torch.Tensor] = []
    loss = sam.step(_closure(model, sam, x, t, calls))
    assert len(calls) == 2
    assert torch.equal(loss.detach(), at_real)
    assert calls[1] > calls[0]  # the second run is at the phantom point, uphill
    assert not sam.at_phantom_point


def test_closure_step_with_rho_zero_is_the_base_step():
    model, x, t = _problem()
    twin = copy.deepcopy(model)
    sam = _sgd_sam(model, rho=0.0)
    base = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        sam.step(_closure(model, sam, x, t))
        base.step(_closure(twin, base, x, t))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_closure_step_works_under_no_grad():
    model, x, t = _problem()
    sam = _sgd_sam(model)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        sam.step(_closure(model, sam, x, t))
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.filterwarnings("ignore:SAM.step.. took a base step without an ascent")
def test_a_closure_returning_none_runs_once_and_the_base_step_uses_the_gradients_as_they_are():
    # Lightning's manual-optimization closure only runs its hooks: SAMClassifier's opt.step() passes one
    model, x, t = _problem()
    twin = copy.deepcopy(model)
    sam, plain = _sgd_sam(model), _sgd_sam(twin)
    for m in (model, twin):
        ((m(x) - t) ** 2).mean().backward()
    calls = []
    assert sam.step(lambda: calls.append(1)) is None
    plain.step()
    assert calls == [1]
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_an_error_in_the_phantom_closure_restores_the_real_parameters():
    model, x, t = _problem()
    sam = _sgd_sam(model)
    before = [p.detach().clone() for p in model.parameters()]
    runs = []

    def closure():
        runs.append(1)
        if len(runs) == 2:
            raise KeyboardInterrupt
        return _closure(model, sam, x, t)()

    with pytest.raises(KeyboardInterrupt):
        sam.step(closure)
    assert not sam.at_phantom_point
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
