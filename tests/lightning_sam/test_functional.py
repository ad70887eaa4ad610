"""The callbacks' maths against closed forms and scikit-learn."""

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from lightning_sam.functional import (
    average_group_accuracy,
    block_directions,
    feature_contrast,
    feature_scaling,
    feature_vector,
    feature_weight,
    fit_linear_probe,
    gini_coefficient,
    group_accuracy,
    group_counts,
    head_phantom,
    importance_weights,
    linear_probe,
    log_relative_gain,
    lorenz_curve,
    phantom_point,
    probe_directions,
    within_class_gini,
    worst_group_accuracy,
)


def test_gini_of_equal_weights_is_zero():
    assert gini_coefficient(torch.full((7,), 0.3)).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("n", [1, 2, 5, 100])
def test_gini_of_one_hot_is_one_minus_one_over_n(n):
    w = torch.zeros(n)
    w[n // 2] = 4.0
    assert gini_coefficient(w).item() == pytest.approx((n - 1) / n)


def test_gini_is_invariant_to_permutation_and_positive_scaling():
    w = torch.rand(50, generator=torch.Generator().manual_seed(0))
    g = gini_coefficient(w)
    assert gini_coefficient(w[torch.randperm(50)]).item() == pytest.approx(g.item(), abs=1e-6)
    assert gini_coefficient(17.5 * w).item() == pytest.approx(g.item(), abs=1e-6)


def test_gini_equals_one_minus_twice_the_area_under_the_lorenz_curve():
    w = torch.rand(40, generator=torch.Generator().manual_seed(1)) ** 3
    x, y = lorenz_curve(w)
    area = torch.trapezoid(y.double(), x.double()).item()
    # the trapezoid area of the n-point curve gives G exactly as 1 - 2·area
    assert gini_coefficient(w).item() == pytest.approx(1 - 2 * area, abs=1e-6)


def test_lorenz_curve_is_monotone_below_the_diagonal_and_ends_at_one_one():
    w = torch.rand(30, generator=torch.Generator().manual_seed(2))
    x, y = lorenz_curve(w)
    assert (x[0].item(), y[0].item(), x[-1].item(), y[-1].item()) == (0.0, 0.0, 1.0, 1.0)
    assert bool((y.diff() >= 0).all())
    assert bool((x.diff() > 0).all())
    assert bool((y <= x + 1e-6).all())


def test_lorenz_curve_of_equal_weights_is_the_diagonal():
    x, y = lorenz_curve(torch.ones(8))
    torch.testing.assert_close(x, y)


def test_inequality_functions_reject_negative_weights():
    with pytest.raises(ValueError, match=">= 0"):
        gini_coefficient(torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match=">= 0"):
        lorenz_curve(torch.tensor([1.0, -0.5]))


def test_importance_weights_for_two_classes_are_the_sigmoid_of_minus_the_signed_margin():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(20, generator=g)  # binary score: logits (0, f)
    y = torch.randint(0, 2, (20,), generator=g)
    logits = torch.stack([torch.zeros(20), f], dim=1)
    signed = 2 * y - 1
    torch.testing.assert_close(importance_weights(logits, y), torch.sigmoid(-signed * f.double()))


def test_importance_weights_of_well_fit_examples_stay_positive_and_ordered():
    # in float32, 1 - softmax underflows to exactly 0 for margins above ~17: every fitted example would tie
    margins = torch.tensor([20.0, 40.0, 80.0])
    w = importance_weights(torch.stack([margins, torch.zeros(3)], dim=1), torch.zeros(3, dtype=torch.long))
    assert (w > 0).all()
    assert w[0] > w[1] > w[2]
    torch.testing.assert_close(w, torch.exp(-margins.double()), rtol=1e-6, atol=0)


def test_head_phantom_moves_the_head_by_rho_along_its_gradient():
    g = torch.Generator().manual_seed(0)
    phi, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    head = nn.Linear(5, 3)
    loss = nn.functional.cross_entropy(head(phi), y)
    grad_w, grad_b = torch.autograd.grad(loss, [head.weight, head.bias])
    w_tilde, b_tilde = head_phantom(phi, y, head.weight.detach(), head.bias.detach(), rho=0.7, head_bias=True)
    step = torch.cat([(w_tilde - head.weight).flatten(), b_tilde - head.bias]).detach()
    grad = torch.cat([grad_w.flatten(), grad_b])
    assert step.norm().item() == pytest.approx(0.7, rel=1e-5)
    torch.testing.assert_close(step, 0.7 * grad / grad.norm())


def test_phantom_point_over_all_parameters_has_norm_rho_and_leaves_the_module_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    names = [n for n, _ in model.named_parameters()]
    point = phantom_point(model, x, y, 0.3, names)
    params = dict(model.named_parameters())
    norm = torch.sqrt(sum((point.parameters[n] - params[n]).square().sum() for n in names))
    assert norm.item() == pytest.approx(0.3, rel=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    # the phantom logits are the model's output with the phantom parameters swapped in
    for n in names:
        params[n].data, point.parameters[n] = point.parameters[n].clone(), params[n].data.clone()
    torch.testing.assert_close(point.phantom_logits, model(x).detach())


def test_phantom_point_of_the_head_matches_the_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x, y = torch.randn(12, 4), torch.randint(0, 2, (12,))
    point = phantom_point(model, x, y, 1.5, ["2.weight", "2.bias"])
    phi = model[1](model[0](x)).detach()
    w_tilde, b_tilde = head_phantom(phi, y, model[2].weight, model[2].bias, 1.5, head_bias=True)
    torch.testing.assert_close(point.parameters["2.weight"], w_tilde.detach())
    torch.testing.assert_close(point.parameters["2.bias"], b_tilde.detach())


def test_head_phantom_moves_only_the_weight_by_default():
    g = torch.Generator().manual_seed(0)
    phi, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    head = nn.Linear(5, 3)
    grad_w = torch.autograd.grad(nn.functional.cross_entropy(head(phi), y), head.weight)[0]
    w_tilde, b_tilde = head_phantom(phi, y, head.weight.detach(), head.bias.detach(), rho=0.7)
    assert torch.equal(b_tilde, head.bias.detach())
    torch.testing.assert_close(w_tilde - head.weight.detach(), 0.7 * grad_w / grad_w.norm())


def _three_class_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.randn(3, 20, generator=torch.Generator().manual_seed(99))
    return 3.0 * torch.randn(n, 20, generator=g) + centres[y] + 5.0, y


@pytest.fixture(params=["newton", "lbfgs"])
def probe_solver(request, monkeypatch):
    """Forces fit_linear_probe's solver, whatever the probe's size."""
    monkeypatch.setattr(linear_probe, "NEWTON_MAX_PARAMETERS", 10**9 if request.param == "newton" else 0)


def test_fit_linear_probe_solves_the_same_problem_as_sklearn(probe_solver):
    x, y = _three_class_data(600, seed=0)
    x_test, y_test = _three_class_data(2000, seed=1)
    probe = fit_linear_probe(x, y, l2_grid=[1e-2])
    z, z_test = (x - probe.mean) / probe.std, (x_test - probe.mean) / probe.std
    reference = LogisticRegression(C=1 / (1e-2 * len(x)), tol=1e-8, max_iter=10_000).fit(z.numpy(), y.numpy())
    ours_p = probe.logits(x_test).softmax(1)
    theirs_p = torch.from_numpy(reference.predict_proba(z_test.numpy())).float()
    torch.testing.assert_close(ours_p, theirs_p, atol=2e-3, rtol=0)
    assert abs(probe.accuracy(x_test, y_test) - reference.score(z_test.numpy(), y_test.numpy())) <= 0.005


def test_fit_linear_probe_accuracy_is_within_half_a_point_of_sklearn_with_the_same_selection(probe_solver):
    x, y = _three_class_data(800, seed=2)
    x_test, y_test = _three_class_data(2000, seed=3)
    grid = (1e-1, 1e-2, 1e-3)
    probe = fit_linear_probe(x, y, l2_grid=grid)
    assert probe.l2 in grid
    z, z_test = ((x - probe.mean) / probe.std).numpy(), ((x_test - probe.mean) / probe.std).numpy()
    reference = LogisticRegression(C=1 / (probe.l2 * len(x)), max_iter=10_000).fit(z, y.numpy())
    assert abs(probe.accuracy(x_test, y_test) - reference.score(z_test, y_test.numpy())) <= 0.005


def test_fit_linear_probe_is_deterministic(probe_solver):
    x, y = _three_class_data(300, seed=4)
    a, b = fit_linear_probe(x, y), fit_linear_probe(x, y)
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(a.bias, b.bias)
    assert a.l2 == b.l2


def test_fit_linear_probe_rejects_a_label_with_a_single_class():
    with pytest.raises(ValueError, match="at least two classes"):
        fit_linear_probe(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))


def test_probe_directions_of_a_two_class_probe_is_the_unit_difference_of_its_rows():
    weight = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 2.0]])
    u = probe_directions(weight)
    expected = torch.tensor([2.0, 0.0, 2.0]) / 8**0.5
    assert u.shape == (3, 1)
    torch.testing.assert_close(u[:, 0].abs(), expected.abs())


def test_feature_weight_of_a_block_is_the_norm_of_the_centred_heads_columns():
    head = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    v = feature_weight(head, block_directions(slice(2, 4), 6))
    centred = head[:, 2:4] - head[:, 2:4].mean(dim=0)
    assert v.item() == pytest.approx(centred.norm().item(), rel=1e-6)


def test_feature_weight_ignores_a_shift_shared_by_all_rows():
    head = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    shifted = head + torch.randn(1, 4, generator=torch.Generator().manual_seed(2))
    u = block_directions(slice(1, 3), 4)
    torch.testing.assert_close(feature_weight(shifted, u), feature_weight(head, u))


def test_feature_weight_is_the_bodys_learning_rate_along_the_feature():
    # d/dΦ of the cross-entropy is Wᵀ(p − e_y) = W_cᵀ(p − e_y): its component along u has size ≤ v, equality at the max
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    u = torch.tensor([[0.6], [0.8], [0.0], [0.0]])
    a = feature_vector(head.weight.detach(), u).flatten()
    phi = torch.randn(5, 4, requires_grad=True)
    y = torch.randint(0, 3, (5,))
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(head(phi), y, reduction="sum"), phi)
    p = head(phi).softmax(dim=1).detach()
    residual = p - nn.functional.one_hot(y, 3).float()
    torch.testing.assert_close((grad @ u).flatten(), residual @ a)


def test_two_class_contrast_is_signed_and_carries_v():
    w = torch.tensor([[0.5, 2.0], [1.5, -1.0]])
    u = torch.tensor([[1.0], [0.0]])
    assert feature_contrast(w, u).item() == pytest.approx(1.0)  # class 1 minus class 0
    assert feature_weight(w, u).item() == pytest.approx(1.0 / 2**0.5)  # |d| / √2
    assert feature_contrast(w.flip(0), u).item() == pytest.approx(-1.0)


def test_a_phantom_that_reverses_a_feature_is_a_flip_not_a_larger_weight():
    u = torch.tensor([[1.0], [0.0]])
    real = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    reversed_head = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])  # 3x the norm, the opposite sign
    s = feature_scaling(real, reversed_head, u)
    assert s.flipped.item()
    assert s.gain.item() == pytest.approx(3.0)
    batch = torch.stack([real * 0.5, reversed_head, real * 2])  # (3, K, D): one phantom head per batch
    assert feature_scaling(real, batch, u).flipped.tolist() == [False, True, False]


def test_log_relative_gain_is_the_log_of_the_papers_ratio_of_ratios():
    w = torch.tensor([[-1.0, -0.5], [1.0, 0.5]])
    w_tilde = torch.tensor([[-0.8, -0.6], [0.8, 0.6]])
    easy_u, hard_u = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    easy, hard = feature_scaling(w, w_tilde, easy_u), feature_scaling(w, w_tilde, hard_u)
    papers = (hard.v_phantom / easy.v_phantom) / (hard.v / easy.v)
    assert log_relative_gain(easy, hard).item() == pytest.approx(torch.log(papers).item())
    assert log_relative_gain(easy, hard).item() == pytest.approx(float(torch.log(torch.tensor(0.6 / 0.5 / 0.8))))


def test_within_class_gini_ignores_a_shift_between_classes():
    w = torch.tensor([0.1, 0.1, 0.1, 0.9, 0.9, 0.9])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert gini_coefficient(w).item() > 0.3
    assert within_class_gini(w, y).item() == pytest.approx(0.0)
    # one-hot inside a class of 4, even in a class of 2: (4 · 3/4 + 2 · 0) / 6
    w2 = torch.tensor([0.0, 0.0, 0.0, 1.0, 5.0, 5.0])
    assert within_class_gini(w2, torch.tensor([0, 0, 0, 0, 1, 1])).item() == pytest.approx(0.5)


def test_group_accuracy_worst_and_training_weighted_average():
    preds = torch.tensor([0, 1, 1, 0, 1, 1])
    target = torch.tensor([0, 1, 0, 0, 1, 0])
    group = torch.tensor([0, 0, 1, 1, 2, -1])
    correct, total = group_counts(preds, target, group, num_groups=4)
    accuracy = group_accuracy(correct, total)
    assert accuracy[:3].tolist() == [1.0, 0.5, 1.0]
    assert accuracy[3].isnan()
    assert worst_group_accuracy(accuracy).item() == 0.5
    expected = (10 * 1.0 + 30 * 0.5 + 60 * 1.0) / 100
    assert average_group_accuracy(accuracy, torch.tensor([10, 30, 60, 1000])).item() == pytest.approx(expected)
