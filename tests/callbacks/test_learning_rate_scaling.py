"""LearningRateScaling: the head's real and phantom weight on each feature, from declared blocks or probes."""

import math

import pytest
import torch

from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.callbacks import FeatureProbe, LearningRateScaling
from lightning_sam.functional import head_phantom, probe_directions
from lightning_sam.sam_classifier import SAMClassifier
from tests.tiny import TinyClassifier, TwoFeatureDataModule, assert_same_snapshot, snapshot, trainer


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
    w_c = w - w.mean(dim=0)  # only the centred head reaches the body's gradient
    assert h["scaling/easy/v"] == pytest.approx(w_c[:, 0].norm().item(), rel=1e-5)
    assert h["scaling/hard/v"] == pytest.approx(w_c[:, 1].norm().item(), rel=1e-5)
    assert h["scaling/easy/contrast"] == pytest.approx((w[1, 0] - w[0, 0]).item(), rel=1e-5)  # signed
    assert h["scaling/ratio_real"] == pytest.approx(h["scaling/hard/v"] / h["scaling/easy/v"], rel=1e-6)
    model.eval()
    with torch.no_grad():
        phi = model.representation(datamodule.train_dataset.x)
    # LSAM's phantom moves the head weight only, by default
    w_tilde, _ = head_phantom(phi, datamodule.train_dataset.y, w, model.head.bias.detach(), rho=0.5)
    wt_c = w_tilde - w_tilde.mean(dim=0)
    assert h["scaling/easy/v_phantom"] == pytest.approx(wt_c[:, 0].norm().item(), rel=1e-4)
    ratio_phantom = wt_c[:, 1].norm().item() / wt_c[:, 0].norm().item()
    assert h["scaling/ratio_phantom"] == pytest.approx(ratio_phantom, rel=1e-4)
    gain = math.log(ratio_phantom / h["scaling/ratio_real"])
    assert h["scaling/log_relative_gain"] == pytest.approx(gain, rel=1e-4, abs=1e-6)
    flips = [(wt_c[:, j] @ w_c[:, j]).item() <= 0 for j in (0, 1)]
    assert h["scaling/flip_rate"] == float(any(flips))


def test_learning_rate_scaling_with_probe_directions_uses_the_probes_normalised_weights(tmp_path):
    probe, callback = FeatureProbe(), LearningRateScaling(rho=0.2)
    model = TinyClassifier()
    trainer(tmp_path, max_epochs=2, callbacks=[probe, callback]).fit(model, TwoFeatureDataModule())
    assert len(callback.history) == 2
    u = probe_directions(probe.probes["b"].representation_weight())
    w = model.head.weight.detach()
    expected = ((w - w.mean(dim=0)) @ u).norm().item()
    h = callback.history[-1]
    assert h["scaling/b/v"] == pytest.approx(expected, rel=1e-5)
    # ℓ_b = log(ṽ_h/ṽ_e)_b − log(v_h/v_e) is monotone in the batch's phantom ratio: the medians correspond
    expected_gain = math.log(h["scaling/ratio_phantom"]) - math.log(h["scaling/ratio_real"])
    assert h["scaling/log_relative_gain"] == pytest.approx(expected_gain, rel=1e-5, abs=1e-7)


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
    with pytest.raises(ValueError, match=r"LearningRateScaling needs feature directions.*add a FeatureProbe"):
        trainer(tmp_path, callbacks=[LearningRateScaling(rho=0.1)]).fit(TinyClassifier(), TwoFeatureDataModule())


def test_learning_rate_scaling_names_roles_the_data_does_not_have(tmp_path):
    with pytest.raises(ValueError, match="hard='spiral' is not among the features"):
        trainer(tmp_path, callbacks=[LearningRateScaling(hard="spiral")]).fit(_toy_model(), TwoFeatureDataModule())


@pytest.mark.parametrize(("rho", "flipping"), [(1e-4, False), (1e4, True)])
def test_learning_rate_scaling_counts_a_phantom_that_reverses_a_feature_as_a_flip(tmp_path, rho, flipping):
    # far beyond the head's size the phantom head is the scaled gradient, which opposes the fitted features
    callback = LearningRateScaling(rho=rho, num_examples=200, batch_size=20)
    trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(_toy_model(), TwoFeatureDataModule())
    flip_rate = callback.history[-1]["scaling/flip_rate"]
    assert flip_rate > 0.5 if flipping else flip_rate == 0.0


def test_learning_rate_scaling_every_n_epochs_zero_measures_once_at_the_end(tmp_path):
    callback = LearningRateScaling(every_n_epochs=0)
    trainer(tmp_path, max_epochs=3, callbacks=[callback]).fit(_toy_model(), TwoFeatureDataModule())
    assert [h["epoch"] for h in callback.history] == [2]
