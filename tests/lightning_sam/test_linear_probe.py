"""The probe's two solvers: Newton's method for small probes and L-BFGS reach the same optimum."""

import pytest
import torch
import torch.nn.functional as F

from lightning_sam.functional import fit_linear_probe, linear_probe


@pytest.fixture
def newton(monkeypatch):
    monkeypatch.setattr(linear_probe, "NEWTON_MAX_PARAMETERS", 10**9)


@pytest.fixture
def lbfgs(monkeypatch):
    monkeypatch.setattr(linear_probe, "NEWTON_MAX_PARAMETERS", 0)


def _blobs(n: int, num_classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    centres = spread * torch.randn(num_classes, dim, generator=g)
    return 2.0 * torch.randn(n, dim, generator=g) + centres[y] + 3.0, y


def _max_gradient(probe: linear_probe.LinearProbe, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest entry of the objective's gradient at the probe, in float64."""
    z = ((x - probe.mean) / probe.std).double()
    weight = probe.weight.double().requires_grad_(True)
    bias = probe.bias.double().requires_grad_(True)
    loss = F.cross_entropy(F.linear(z, weight, bias), y) + 0.5 * probe.l2 * weight.square().sum()
    grads = torch.autograd.grad(loss, (weight, bias))
    return max(g.abs().max().item() for g in grads)


@pytest.mark.parametrize(("num_classes", "dim", "seed"), [(2, 2, 0), (2, 5, 1), (3, 4, 2), (5, 1, 3)])
def test_newton_reaches_the_probe_lbfgs_reaches(num_classes, dim, seed, monkeypatch):
    x, y = _blobs(600, num_classes, dim, spread=1.5, seed=seed)
    monkeypatch.setattr(linear_probe, "NEWTON_MAX_PARAMETERS", 10**9)
    ours = fit_linear_probe(x, y)
    monkeypatch.setattr(linear_probe, "NEWTON_MAX_PARAMETERS", 0)
    reference = fit_linear_probe(x, y)
    assert ours.l2 == reference.l2
    # both keep the rows summing to zero along the softmax's shift invariance, so the parameters themselves agree
    torch.testing.assert_close(ours.weight, reference.weight, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(ours.bias, reference.bias, atol=2e-4, rtol=1e-3)
    assert _max_gradient(ours, x, y) < 1e-5


def test_newton_keeps_the_minimum_norm_bias(newton):
    x, y = _blobs(400, 4, 3, spread=2.0, seed=5)
    probe = fit_linear_probe(x, y)
    assert abs(probe.bias.sum().item()) < 1e-5
    torch.testing.assert_close(probe.weight.sum(dim=0), torch.zeros(3), atol=1e-5, rtol=0)


def test_newton_converges_on_separable_data_without_nan(newton):
    x = torch.randn(600, 2, generator=torch.Generator().manual_seed(6))
    x = x[x[:, 0].abs() > 0.05]  # a narrow gap between the classes: the weakly regularised optimum lies far out
    y = (x[:, 0] > 0).long()
    probe = fit_linear_probe(x, y, l2_grid=[1e-5])
    assert torch.isfinite(probe.weight).all()
    assert torch.isfinite(probe.bias).all()
    assert probe.weight.abs().max() > 10  # weak regularisation: large weights
    assert probe.accuracy(x, y) == 1.0
    assert _max_gradient(probe, x, y) < 1e-5


def test_newton_without_l2_handles_a_constant_dimension(newton):
    x, y = _blobs(400, 3, 2, spread=1.0, seed=7)
    x = torch.cat([x, torch.full((400, 1), 4.0)], dim=1)  # its weights are free: the Hessian is singular there
    probe = fit_linear_probe(x, y, l2_grid=[0.0])
    assert torch.isfinite(probe.weight).all()
    assert probe.weight[:, 2].abs().max() == 0
    assert _max_gradient(probe, x, y) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_newton_solves_in_float32_or_wider(dtype, newton):
    x, y = _blobs(300, 2, 2, spread=2.0, seed=8)
    probe = fit_linear_probe(x.to(dtype), y)
    assert probe.weight.dtype == torch.promote_types(dtype, torch.float32)
