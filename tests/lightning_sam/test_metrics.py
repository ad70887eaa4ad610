"""The torchmetrics versions equal the pure functions (their DDP sync is tested in tests/callbacks/test_ddp.py)."""

import torch

from lightning_sam.functional import gini_coefficient, group_accuracy, group_counts
from lightning_sam.metrics import GiniCoefficient, PerGroupAccuracy


def test_gini_metric_over_batches_equals_the_function_on_all_weights():
    weights = torch.rand(100, generator=torch.Generator().manual_seed(0)) ** 2
    metric = GiniCoefficient()
    for chunk in weights.split(13):
        metric.update(chunk)
    assert metric.compute().item() == gini_coefficient(weights).item()


def test_gini_metric_reset_forgets_earlier_weights():
    metric = GiniCoefficient()
    metric.update(torch.tensor([0.0, 5.0]))
    metric.reset()
    metric.update(torch.ones(3))
    assert metric.compute().item() == 0.0


def test_per_group_accuracy_metric_over_batches_equals_the_functions():
    g = torch.Generator().manual_seed(0)
    preds, target = torch.randint(0, 2, (60,), generator=g), torch.randint(0, 2, (60,), generator=g)
    group = torch.randint(-1, 3, (60,), generator=g)  # -1: no group
    metric = PerGroupAccuracy(num_groups=3)
    for p, t, gr in zip(preds.split(7), target.split(7), group.split(7), strict=True):
        metric.update(p, t, gr)
    torch.testing.assert_close(metric.compute(), group_accuracy(*group_counts(preds, target, group, 3)))
