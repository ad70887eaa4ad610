"""The SAM optimizer wrapper on tiny analytic problems."""

import warnings

import pytest
import torch
from torch import nn

from lightning_sam import SAM
from lightning_sam.functional import perturbation, perturbed_point


def _quadratic(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(3, 2), torch.randn(8, 3), torch.randn(8, 2)


def _loss(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((model(x) - t) ** 2).mean()


@pytest.mark.parametrize("rho", [-0.1, float("nan")])
def test_rho_must_be_non_negative(rho):
    model, _, _ = _quadratic()
    with pytest.raises(ValueError, match="rho must be >= 0"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=rho)


def test_ascent_has_norm_rho_along_the_gradient():
    model, x, t = _quadratic()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.3)
    _loss(model, x, t).backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    ascent = sam.ascend()
    eps = [p.detach() - b for p, b in zip(model.parameters(), before)]
    flat_eps, flat_g = torch.cat([e.flatten() for e in eps]), torch.cat([g.flatten() for g in grads])
    assert torch.linalg.vector_norm(flat_eps).item() == pytest.approx(0.3, rel=1e-5)
    assert ascent.perturbation_norm.item() == pytest.approx(0.3, rel=1e-5)
    assert ascent.grad_norm.item() == pytest.approx(torch.linalg.vector_norm(flat_g).item(), rel=1e-6)
    torch.testing.assert_close(flat_eps, 0.3 * flat_g / flat_g.norm())


def test_zero_gradient_gives_zero_perturbation_not_nan():
    model, _, _ = _quadratic()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    ascent = sam.ascend()
    assert ascent.grad_norm.item() == 0.0
    assert ascent.perturbation_norm.item() == 0.0
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_nonfinite_gradient_gives_a_zero_scale_and_leaves_the_real_point_untouched(adaptive, bad):
    model, _, _ = _quadratic()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, adaptive=adaptive)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 1.0)
        p.grad.view(-1)[0] = bad
    ascent = sam.ascend()  # decided on the device: no host sync
    assert not torch.isfinite(ascent.grad_norm)
    assert ascent.perturbation_norm.item() == 0.0
    for p, b in zip(model.parameters(), before):
        # a zero scale: θ wherever the gradient is finite, NaN (0 · ∞) where it is not, so the phantom loss and
        # gradient are non-finite and the step is caught as any non-finite step is
        assert torch.isnan(p.view(-1)[0])
        assert torch.equal(p.view(-1)[1:], b.view(-1)[1:])
    sam.restore()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_perturbation_of_a_nonfinite_gradient_is_zero(adaptive, bad):
    params = [torch.randn(2, 3), torch.randn(3)]
    grads = [torch.ones(2, 3), torch.ones(3)]
    grads[0][0, 0] = bad
    step = perturbation(params, grads, rho=0.5, adaptive=adaptive)
    assert not torch.isfinite(step.grad_norm)
    assert step.norm.item() == 0.0
    for e in step.epsilon:
        assert torch.equal(e, torch.zeros_like(e))


@pytest.mark.parametrize("adaptive", [False, True])
def test_perturbed_point_is_theta_plus_the_perturbation(adaptive):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g)]
    grads = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g)]
    expected = perturbation(params, grads, rho=0.3, adaptive=adaptive)
    out = [torch.empty_like(p) for p in params]
    got = perturbed_point(params, grads, rho=0.3, out=out, adaptive=adaptive)
    for p, e, o in zip(params, expected.epsilon, out):
        torch.testing.assert_close(o, p + e, rtol=0, atol=1e-7)
    torch.testing.assert_close(got.norm, expected.norm)
    torch.testing.assert_close(got.grad_norm, expected.grad_norm)


@pytest.mark.parametrize("gradient", [0.0, 1e-7, 1e-3])
@pytest.mark.parametrize("adaptive", [False, True])
def test_an_fp16_phantom_point_stays_finite_for_a_small_gradient(gradient, adaptive):
    # ρ / ‖g‖ exceeds fp16's range (65504) for ‖g‖ < 8e-7 at ρ = 0.05: the scale must not be rounded to fp16 first
    params = [torch.ones(4, 3, dtype=torch.float16), torch.ones(3, dtype=torch.float16)]
    grads = [torch.full_like(p, gradient) for p in params]
    out = [torch.empty_like(p) for p in params]
    perturbed_point(params, grads, rho=0.05, out=out, adaptive=adaptive)
    expected = perturbation(params, grads, rho=0.05, adaptive=adaptive).epsilon
    for p, e, o in zip(params, expected, out):
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o, p + e)


def test_an_fp16_gradient_norm_beyond_fp16_range_is_finite():
    grads = [torch.full((10,), 3e4, dtype=torch.float16)]  # norm ≈ 94868 > 65504
    step = perturbation([torch.zeros(10, dtype=torch.float16)], grads, rho=0.5)
    assert step.grad_norm.item() == pytest.approx(3e4 * 10**0.5, rel=1e-3)
    assert step.norm.item() == pytest.approx(0.5, rel=1e-3)


def test_restore_returns_real_parameters_bit_for_bit():
    model, x, t = _quadratic()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.7)
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, x, t).backward()
    sam.ascend()
    assert sam.at_phantom_point
    sam.restore()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_ascend_writes_the_phantom_point_into_the_same_tensors_every_step_and_leaves_theta_alone():
    model, x, t = _quadratic()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.7)
    phantoms = []
    for _ in range(2):
        sam.zero_grad()
        _loss(model, x, t).backward()
        real = [p.data_ptr() for p in model.parameters()]
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
        expected = [(p + 0.7 * p.grad / norm).detach() for p in model.parameters()]
        with sam.phantom_point():
            phantoms.append([p.data.data_ptr() for p in model.parameters()])
            for p, e in zip(model.parameters(), expected, strict=True):
                torch.testing.assert_close(p.data, e)
        assert [p.data_ptr() for p in model.parameters()] == real  # θ's own storage, back
        sam.step()
    assert phantoms[0] == phantoms[1]  # allocated once
    model.double()  # parameters of another dtype get new phantom tensors
    sam.zero_grad()
    _loss(model, x.double(), t.double()).backward()
    with sam.phantom_point():
        assert all(p.dtype == torch.float64 for p in model.parameters())


def test_phantom_point_restores_when_the_block_raises():
    model, x, t = _quadratic()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.7)
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, x, t).backward()
    with pytest.raises(KeyboardInterrupt), sam.phantom_point():
        raise KeyboardInterrupt
    assert not sam.at_phantom_point
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_step_is_refused_at_the_phantom_point():
    model, x, t = _quadratic()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.7)
    _loss(model, x, t).backward()
    sam.ascend()
    with pytest.raises(RuntimeError, match="phantom point"):
        sam.step()


def test_second_step_equals_base_step_with_phantom_gradient():
    model, x, t = _quadratic()
    reference = nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2), rho=0.2)
    base = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)

    _loss(model, x, t).backward()
    with sam.phantom_point():
        phantom = [p.detach().clone() for p in model.parameters()]
        sam.zero_grad()
        _loss(model, x, t).backward()
    sam.step()

    # reference: the gradient at θ + ε from a separate copy, applied to θ by the plain base optimizer
    at_phantom = nn.Linear(3, 2)
    with torch.no_grad():
        for q, v in zip(at_phantom.parameters(), phantom):
            q.copy_(v)
    _loss(at_phantom, x, t).backward()
    for p, q in zip(reference.parameters(), at_phantom.parameters()):
        p.grad = q.grad.clone()
    base.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


def test_perturbed_params_limits_the_ascent_to_a_subset():
    body, head = nn.Linear(3, 4), nn.Linear(4, 2)
    model = nn.Sequential(body, head)
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, perturbed_params=head.parameters())
    body_before = [p.detach().clone() for p in body.parameters()]
    model(torch.randn(5, 3)).sum().backward()
    ascent = sam.ascend()
    assert ascent.perturbation_norm.item() == pytest.approx(0.5, rel=1e-5)
    for p, b in zip(body.parameters(), body_before):
        assert torch.equal(p, b)


def test_asam_perturbation_has_norm_rho_after_undoing_its_scaling():
    model, x, t = _quadratic()
    eta = 0.01
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.4, adaptive=True, eta=eta)
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, x, t).backward()
    sam.ascend()
    # ε = ρ T² g / ‖T g‖  =>  ‖T⁻¹ ε‖ = ρ, with T = |θ| + η on the weight and 1 on the bias
    unscaled = []
    for p, b in zip(model.parameters(), before):
        scale = b.abs() + eta if p.ndim > 1 else torch.ones_like(b)
        unscaled.append(((p.detach() - b) / scale).flatten())
    assert torch.linalg.vector_norm(torch.cat(unscaled)).item() == pytest.approx(0.4, rel=1e-5)


@pytest.mark.filterwarnings("ignore:SAM.step.. took a base step without an ascent")
def test_scheduler_and_state_dict_act_on_the_base_optimizer():
    model, x, t = _quadratic()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sam = SAM(base, rho=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(sam, step_size=1, gamma=0.5)
    _loss(model, x, t).backward()
    sam.step()
    scheduler.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)
    state = sam.state_dict()
    assert len(state["state"]) == 2  # the base optimizer's momentum buffers, one per parameter

    fresh_base = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    fresh = SAM(fresh_base, rho=0.1)
    fresh.load_state_dict(state)
    assert fresh.param_groups is fresh_base.param_groups
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.05)
    for p in model.parameters():
        torch.testing.assert_close(fresh.state[p]["momentum_buffer"], base.state[p]["momentum_buffer"])


def test_a_base_step_without_an_ascent_warns_that_it_is_not_sam():
    model, x, t = _quadratic()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.1)
    _loss(model, x, t).backward()
    with pytest.warns(UserWarning, match="base step without an ascent"):
        sam.step()  # what a GradScaler does with an optimizer it was handed: no closure, no ascent
    with sam.phantom_point():  # the README's manual pattern: ascend, backward at θ + ε, restore, step
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sam.step()
