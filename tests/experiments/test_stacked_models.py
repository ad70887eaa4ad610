"""The stacked (many-models-at-once) toy training step equals SAMClassifier's own step."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from experiments.stacked_models import (
    StackedSGD,
    cosine_learning_rates,
    head_step_gradients,
    sam_step_gradients,
    stack_parameters,
    stacked_perturbation,
    toy_classifier,
)
from lightning_sam.functional import perturbation

STEPS, BATCH = 5, 16


def _batches(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(STEPS * BATCH, 3, generator=g)
    return x, (x[:, 0] + 0.3 * torch.randn(STEPS * BATCH, generator=g) > 0).long()


def _train_with_lightning(optimizer: str, rho: float, seed: int, lsam_bias: bool) -> dict[str, torch.Tensor]:
    model = toy_classifier(seed, block_size=2, hidden=8, optimizer=optimizer, rho=rho, lsam_bias=lsam_bias)
    x, y = _batches(seed)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    assert trainer.global_step == STEPS
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("optimizer", "rho", "lsam_bias"),
    [("sgd", 0.0, False), ("lsam", 0.3, False), ("lsam", 0.3, True), ("sam", 0.05, False)],
)
def test_stacked_steps_equal_sam_classifier(optimizer, rho, lsam_bias):
    seeds = (0, 1)
    params = stack_parameters([toy_classifier(s, block_size=2, hidden=8) for s in seeds])
    data = [_batches(s) for s in seeds]
    x, y = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
    sgd, rhos = StackedSGD(), torch.full((len(seeds),), rho)
    for step, lr in enumerate(cosine_learning_rates(0.05, STEPS)):
        batch = slice(step * BATCH, (step + 1) * BATCH)
        if optimizer == "sam":
            grads, _ = sam_step_gradients(params, x[:, batch], y[:, batch], rhos)
        else:
            head_bias = torch.full((len(seeds),), lsam_bias)
            grads, _ = head_step_gradients(params, x[:, batch], y[:, batch], rhos, head_bias)
        sgd.step(params, grads, lr)
    for i, seed in enumerate(seeds):
        expected = _train_with_lightning(optimizer, rho, seed, lsam_bias)
        for name, value in expected.items():
            torch.testing.assert_close(params[name][i], value, rtol=1e-5, atol=1e-6, msg=name)


def test_stacked_perturbation_equals_perturbation_per_model():
    grads = [torch.randn(3, 2, 4), torch.randn(3, 2)]
    rho = torch.tensor([0.0, 0.1, 2.0])
    stacked = stacked_perturbation(grads, rho)
    for i in range(3):
        params = [torch.zeros(2, 4), torch.zeros(2)]
        single = perturbation(params, [g[i] for g in grads], float(rho[i])).epsilon
        for a, b in zip(stacked, single):
            torch.testing.assert_close(a[i], b)


def test_lsam_bias_changes_the_step():
    params = stack_parameters([toy_classifier(0, block_size=1, hidden=8)])
    x, y = _batches(0)
    rho = torch.tensor([0.5])
    weight_only, _ = head_step_gradients(params, x[None, :BATCH], y[None, :BATCH], rho, torch.tensor([False]))
    with_bias, _ = head_step_gradients(params, x[None, :BATCH], y[None, :BATCH], rho, torch.tensor([True]))
    assert not torch.allclose(weight_only["head.bias"], with_bias["head.bias"])


def test_cosine_learning_rates_start_at_lr_and_decay():
    rates = cosine_learning_rates(0.1, 4)
    assert rates[0] == 0.1
    assert rates[2] == pytest.approx(0.05)
    assert rates == sorted(rates, reverse=True)
