"""LearningRateScaling: the head's real and phantom weight on each feature, from declared blocks or probes."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import TinyClassifier, TwoFeatureDataModule, assert_same_snapshot, snapshot, trainer  # noqa: E402

from lightning_sam.bodies import TwoBranchMLP  # noqa: E402
from lightning_sam.callbacks import FeatureProbe, LearningRateScaling  # noqa: E402
from lightning_sam.functional import head_phantom, probe_directions  # noqa: E402
from lightning_sam.sam_classifier import SAMClassifier  # noqa: E402


def _toy_model() -> SAMClassifier:
    torch.manual_seed(0)
    return SAMClassifier(TwoBranchMLP(hidden=8), optimizer="lsam", rho=0.5, lr_schedule="constant")


def test_learning_rate_scaling_with_feature_blocks_logs_the_heads_columns_and_their_phantoms(tmp_path):
    # TwoBranchMLP's blocks: easy = column 0, hard = column 1; the whole training set in one batch gives one
    # phantom head, computable in closed form
    callback = LearningRateScaling(num_examples=10_000, batch_size=10_000)
    model, datamodule = _toy_model(), TwoFeatureDataModule()
    trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model, datamodule)
    h = callback.history[-1]
    w = model.head.weight.detach()
    assert h["scaling/easy/v"] == pytest.approx(w[:, 0].norm().item(), rel=1e-5)
    assert h["scaling/hard/v"] == pytest.approx(w[:, 1].norm().item(), rel=1e-5)
    assert h["scaling/ratio_real"] == pytest.approx(h["scaling/hard/v"] / h["scaling/easy/v"], rel=1e-6)
    model.eval()
    with torch.no_grad():
        phi = model.representation(datamodule.train_dataset.x)
    w_tilde, _ = head_phantom(phi, datamodule.train_dataset.y, w, model.head.bias.detach(), rho=0.5)
    assert h["scaling/easy/v_phantom"] == pytest.approx(w_tilde[:, 0].norm().item(), rel=1e-4)
    ratio_phantom = w_tilde[:, 1].norm().item() / w_tilde[:, 0].norm().item()
    assert h["scaling/ratio_phantom"] == pytest.approx(ratio_phantom, rel=1e-4)


def test_learning_rate_scaling_with_probe_directions_uses_the_probes_normalised_weights(tmp_path):
    probe, callback = FeatureProbe(), LearningRateScaling(rho=0.2)
    model = TinyClassifier()
    trainer(tmp_path, max_epochs=2, callbacks=[probe, callback]).fit(model, TwoFeatureDataModule())
    assert len(callback.history) == 2
    u = probe_directions(probe.probes["b"].representation_weight())
    expected = (model.head.weight.detach() @ u).norm().item()
    assert callback.history[-1]["scaling/b/v"] == pytest.approx(expected, rel=1e-5)
    assert callback.history[-1]["scaling/ratio_phantom"] > 0


def test_learning_rate_scaling_leaves_the_model_as_found(tmp_path):
    callback = LearningRateScaling()
    model = _toy_model()
    fitted = trainer(tmp_path, max_epochs=1, callbacks=[callback])
    fitted.fit(model, TwoFeatureDataModule())
    model.train()
    model.head.weight.grad = torch.randn_like(model.head.weight)
    before = snapshot(model)
    callback.measure(fitted, model)
    assert_same_snapshot(before, snapshot(model))


def test_learning_rate_scaling_without_blocks_or_probe_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="LearningRateScaling needs feature directions.*add a FeatureProbe"):
        trainer(tmp_path, callbacks=[LearningRateScaling(rho=0.1)]).fit(TinyClassifier(), TwoFeatureDataModule())


def test_learning_rate_scaling_names_roles_the_data_does_not_have(tmp_path):
    with pytest.raises(ValueError, match="hard='spiral' is not among the features"):
        trainer(tmp_path, callbacks=[LearningRateScaling(hard="spiral")]).fit(_toy_model(), TwoFeatureDataModule())
