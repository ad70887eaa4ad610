"""One perturbation everywhere: the optimizer's ascent, the callbacks' phantom point and the closed-form LSAM head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_sam import SAMClassifier
from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.functional import head_phantom, perturbation, phantom_point

SETTINGS = {
    "sam": {"optimizer": "sam"},
    "asam": {"optimizer": "asam", "asam_eta": 0.05},
    "lsam": {"optimizer": "lsam"},
    "lsam_bias": {"optimizer": "lsam", "lsam_bias": True},
}


def _model_and_batch(options: dict) -> tuple[SAMClassifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = SAMClassifier(TwoBranchMLP(hidden=8, block_size=2), rho=0.3, lr_schedule="constant", **options)
    return model, torch.randn(24, 3), torch.randint(0, 2, (24,))


def _perturbed_names(model: SAMClassifier) -> list[str]:
    spec = model.perturbation_spec
    if spec.scope == "all":
        return [n for n, _ in model.named_parameters()]
    return ["head.weight", "head.bias"] if spec.head_bias else ["head.weight"]


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_sam_ascend_and_the_measured_phantom_point_agree(setting):
    model, x, y = _model_and_batch(SETTINGS[setting])
    spec, names = model.perturbation_spec, _perturbed_names(model)
    point = phantom_point(model, x, y, spec.rho, names, adaptive=spec.adaptive, eta=spec.eta)

    sam = model.configure_optimizers()
    F.cross_entropy(model(x), y).backward()
    with sam.phantom_point():
        trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, value in trained.items():
        expected = point.parameters.get(name, dict(model.named_parameters())[name].detach())
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=name)
    if spec.scope == "head":
        w_tilde, b_tilde = head_phantom(
            model.body(x), y, model.head.weight, model.head.bias, spec.rho, spec.head_bias, spec.adaptive, spec.eta
        )
        torch.testing.assert_close(trained["head.weight"], w_tilde.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(trained["head.bias"], b_tilde.detach(), rtol=1e-6, atol=1e-7)


def test_asam_scales_weights_elementwise_and_leaves_vectors_unscaled():
    w, b = torch.tensor([[2.0, -0.5]]), torch.tensor([3.0])
    gw, gb = torch.tensor([[1.0, 1.0]]), torch.tensor([1.0])
    step = perturbation([w, b], [gw, gb], rho=1.0, adaptive=True, eta=0.0)
    # T = |w| on the weight, 1 on the bias: ε ∝ T² g, normalised by ‖T g‖
    t_g = torch.tensor([2.0, 0.5, 1.0])
    direction = torch.tensor([4.0, 0.25, 1.0])
    torch.testing.assert_close(torch.cat([step.epsilon[0].flatten(), step.epsilon[1]]), direction / t_g.norm())
    assert step.grad_norm.item() == pytest.approx(t_g.norm().item())
    assert step.norm.item() == pytest.approx((direction.norm() / t_g.norm()).item())


def test_sam_perturbation_has_norm_rho_along_the_gradient():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]
    step = perturbation([torch.zeros(2), torch.zeros(2, 1)], grads, rho=2.0)
    assert step.norm.item() == pytest.approx(2.0)
    torch.testing.assert_close(step.epsilon[1], torch.tensor([[0.0], [1.6]]))
