"""The callbacks find the head by what it does (the nn.Linear producing the output), not by registration order."""

import pytest
import torch
from torch import nn

from lightning_sam.callbacks import FeatureProbe, ImportanceWeights, LearningRateScaling, SharpnessAware
from lightning_sam.callbacks._representation import detect_head, final_linear
from tests.tiny import TinyClassifier, TwoFeatureDataModule, trainer


class AuxiliaryLast(TinyClassifier):
    """The head is not the last nn.Linear registered: an auxiliary layer, unused by forward, comes after it."""

    def __init__(self) -> None:
        super().__init__()
        self.auxiliary = nn.Linear(2, 5)


class NoLinearOutput(TinyClassifier):
    """The output is not any nn.Linear's output (a temperature after the head)."""

    def forward(self, x):
        return self.head(self.body(x)) / 2.0


def test_detect_head_finds_the_layer_that_produces_the_output_and_leaves_the_model_alone():
    model = AuxiliaryLast().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert final_linear(model)[0] == "auxiliary"  # by registration order: the wrong layer
    assert detect_head(model, torch.randn(4, 3))[0] == "head"
    assert final_linear(model)[0] == "head"  # remembered for this model
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "make_callbacks",
    [
        lambda: [ImportanceWeights(rho=0.1)],
        lambda: [FeatureProbe()],
        lambda: [FeatureProbe(), LearningRateScaling(rho=0.1)],  # directions from the probes
    ],
    ids=["ImportanceWeights", "FeatureProbe", "LearningRateScaling"],
)
def test_measuring_callbacks_read_the_head_that_produces_the_output(tmp_path, make_callbacks):
    callbacks = make_callbacks()
    model = AuxiliaryLast()
    trainer(tmp_path, max_epochs=1, callbacks=callbacks).fit(model, TwoFeatureDataModule())
    assert all(c.history for c in callbacks)
    assert final_linear(model)[0] == "head"


def test_a_model_whose_output_no_linear_produces_fails_before_the_first_epoch(tmp_path):
    seen = []

    class Counting(ImportanceWeights):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(trainer.current_epoch)

    with pytest.raises(ValueError, match=r"not the output of any of its nn.Linear layers .*pass head=<module name>"):
        trainer(tmp_path, max_epochs=1, callbacks=[Counting(rho=0.1)]).fit(NoLinearOutput(), TwoFeatureDataModule())
    assert seen == []


def test_sharpness_aware_head_scope_perturbs_the_layer_that_produces_the_output(tmp_path):
    model = AuxiliaryLast()
    callback = SharpnessAware(rho=0.05, scope="head")
    trainer(tmp_path, max_steps=1, callbacks=[callback]).fit(model, TwoFeatureDataModule())
    assert callback._perturbed == [model.head.weight]
