"""GroupAccuracy: per-group, worst-group and training-weighted average accuracy on validation and test."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_sam.callbacks import GroupAccuracy
from tests.tiny import TinyClassifier, TwoFeatureDataModule, trainer


def _expected(model, dataset, counts):
    model.eval()
    with torch.no_grad():
        hit = (model(dataset.x).argmax(1) == dataset.y).double()
    acc = torch.stack([hit[dataset.group == g].mean() for g in range(4)])
    return acc, (acc * counts).sum() / counts.sum()


def test_group_accuracy_logs_every_group_the_worst_and_the_training_weighted_average(tmp_path):
    callback = GroupAccuracy()
    model, datamodule = TinyClassifier(), TwoFeatureDataModule()
    fit = trainer(tmp_path, max_epochs=1, callbacks=[callback])
    fit.fit(model, datamodule)
    fit.test(model, datamodule)
    counts = torch.bincount(datamodule.train_dataset.group, minlength=4).double()
    val, test = callback.history  # one validation epoch, one test epoch
    for stage, dataset, logged in (("val", datamodule.val_dataset, val), ("test", datamodule.test_dataset, test)):
        acc, avg = _expected(model, dataset, counts)
        for g in range(4):
            assert logged[f"{stage}/group_{g}/acc"] == pytest.approx(acc[g].item(), abs=1e-6)
        assert logged[f"{stage}/worst_group_acc"] == pytest.approx(acc.min().item(), abs=1e-6)
        assert logged[f"{stage}/avg_acc"] == pytest.approx(avg.item(), abs=1e-6)
    assert fit.callback_metrics["test/avg_acc"].item() == pytest.approx(test["test/avg_acc"])


def test_group_accuracy_uses_the_logits_the_step_returns(tmp_path):
    class ConstantLogits(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            return {"logits": torch.tensor([[0.0, 1.0]]).expand(len(batch[0]), 2)}  # always predicts class 1

    callback = GroupAccuracy()
    fit = trainer(tmp_path, max_epochs=1, callbacks=[callback])
    fit.fit(ConstantLogits(), TwoFeatureDataModule())
    # group 2a + b: class-1 groups (2, 3) are all right, class-0 groups all wrong
    assert [fit.callback_metrics[f"val/group_{g}/acc"].item() for g in range(4)] == [0.0, 0.0, 1.0, 1.0]


def test_group_accuracy_without_groups_names_the_fix(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,))), batch_size=8)
    with pytest.raises(ValueError, match=r"GroupAccuracy needs groups.*num_groups="):
        trainer(tmp_path, callbacks=[GroupAccuracy()]).fit(TinyClassifier(), data, data)


def test_group_accuracy_rejects_weights_of_the_wrong_length():
    with pytest.raises(ValueError, match="group_weights has 3 entries but num_groups is 4"):
        GroupAccuracy(num_groups=4, group_weights=[1, 2, 3])
