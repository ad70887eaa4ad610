"""ImportanceWeights: Gini coefficients and Lorenz figures of real and phantom weights, without side effects."""

import pytest
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.callbacks import ImportanceWeights, LearningRateScaling
from lightning_sam.callbacks import importance_weights as importance_weights_module
from lightning_sam.functional import gini_coefficient, importance_weights, within_class_gini
from lightning_sam.sam_classifier import SAMClassifier
from tests.tiny import TinyClassifier, TwoFeatureDataModule, assert_same_snapshot, snapshot, trainer

KEYS = (
    "importance/gini_real",
    "importance/gini_phantom",
    "importance/gini_within_class_real",
    "importance/gini_within_class_phantom",
)


def test_importance_weights_logs_both_ginis_and_one_lorenz_image_per_epoch(tmp_path):
    callback = ImportanceWeights(rho=0.5, num_examples=64)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, max_epochs=2, callbacks=[callback], logger=logger).fit(TinyClassifier(), TwoFeatureDataModule())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert set(KEYS) <= set(events.Tags()["scalars"])
    assert len(events.Images("importance/lorenz")) == 2
    assert len(callback.history) == 2
    assert all(0 <= h["importance/gini_real"] < 1 and 0 <= h["importance/gini_phantom"] < 1 for h in callback.history)


@pytest.mark.parametrize(("figure_every_n_epochs", "figure_epochs"), [(2, [1, 3]), (3, [2, 3]), (0, [3])])
def test_importance_weights_draws_the_lorenz_figure_every_n_epochs_and_after_the_last(
    tmp_path, figure_every_n_epochs, figure_epochs
):
    callback = ImportanceWeights(rho=0.5, num_examples=64, figure_every_n_epochs=figure_every_n_epochs)
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit = trainer(tmp_path, max_epochs=4, callbacks=[callback], logger=logger)
    fit.fit(TinyClassifier(), TwoFeatureDataModule())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    steps_per_epoch = fit.global_step // 4
    drawn = [image.step // steps_per_epoch - 1 for image in events.Images("importance/lorenz")]
    assert drawn == figure_epochs
    assert len(callback.history) == 4  # the Gini coefficients at every measurement


def test_importance_weights_refuses_a_negative_figure_schedule():
    with pytest.raises(ValueError, match="figure_every_n_epochs must be an int >= 0"):
        ImportanceWeights(figure_every_n_epochs=-1)


def test_importance_weights_real_gini_is_that_of_the_models_eval_logits_on_the_fixed_examples(tmp_path):
    callback = ImportanceWeights(rho=0.5, num_examples=1000, lorenz_figure=False)  # more than the dataset: all
    model, datamodule = TinyClassifier(), TwoFeatureDataModule()
    trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model, datamodule)
    model.eval()
    y = datamodule.train_dataset.y
    with torch.no_grad():
        weights = importance_weights(model(datamodule.train_dataset.x), y)
    h = callback.history[-1]
    assert h["importance/gini_real"] == pytest.approx(gini_coefficient(weights).item(), abs=1e-6)
    assert h["importance/gini_within_class_real"] == pytest.approx(within_class_gini(weights, y).item(), abs=1e-6)


def test_importance_weights_phantom_equals_real_at_rho_zero(tmp_path):
    callback = ImportanceWeights(rho=0.0, lorenz_figure=False)
    trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(TinyClassifier(), TwoFeatureDataModule())
    h = callback.history[-1]
    assert h["importance/gini_phantom"] == pytest.approx(h["importance/gini_real"], abs=1e-7)


@pytest.mark.parametrize("scope", ["head", "all"])
def test_importance_weights_leaves_parameters_gradients_buffers_modes_and_rng_as_found(tmp_path, scope):
    callback = ImportanceWeights(rho=0.5, scope=scope, lorenz_figure=False)
    model = TinyClassifier()
    fitted = trainer(tmp_path, max_epochs=1, callbacks=[callback])
    fitted.fit(model, TwoFeatureDataModule())
    model.train()
    model.head.weight.grad = torch.randn_like(model.head.weight)
    before = snapshot(model)
    callback.measure(fitted, model)
    assert len(callback.history) == 2
    assert_same_snapshot(before, snapshot(model))


def _fit_samclassifier(tmp_path, callback, optimizer="lsam"):
    torch.manual_seed(0)
    model = SAMClassifier(TwoBranchMLP(hidden=8), optimizer=optimizer, rho=0.3, lr_schedule="constant")
    trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model, TwoFeatureDataModule(seed=1))
    return callback.history[-1]


def test_importance_weights_takes_rho_and_scope_from_samclassifier(tmp_path):
    default = _fit_samclassifier(tmp_path, ImportanceWeights(lorenz_figure=False))
    same = _fit_samclassifier(tmp_path, ImportanceWeights(rho=0.3, scope="head", lorenz_figure=False))
    other = _fit_samclassifier(tmp_path, ImportanceWeights(rho=0.3, scope="all", lorenz_figure=False))
    assert default == same
    assert default["importance/gini_phantom"] != other["importance/gini_phantom"]
    sgd = _fit_samclassifier(tmp_path, ImportanceWeights(lorenz_figure=False), optimizer="sgd")  # its rho is 0
    assert sgd["importance/gini_phantom"] == pytest.approx(sgd["importance/gini_real"], abs=1e-7)


def test_importance_weights_without_rho_on_a_plain_module_asks_for_it(tmp_path):
    with pytest.raises(
        ValueError, match=r"ImportanceWeights needs the perturbation radius: pass ImportanceWeights\(rho="
    ):
        trainer(tmp_path, callbacks=[ImportanceWeights(lorenz_figure=False)]).fit(
            TinyClassifier(), TwoFeatureDataModule()
        )


def test_importance_weights_by_default_draws_lorenz_only_when_tensorboard_is_there(tmp_path, monkeypatch):
    drawn = []
    draw = importance_weights_module._lorenz_figure
    monkeypatch.setattr(importance_weights_module, "_lorenz_figure", lambda *args: drawn.append(1) or draw(*args))
    callback = ImportanceWeights(rho=0.1)
    trainer(tmp_path, callbacks=[callback], logger=CSVLogger(tmp_path)).fit(TinyClassifier(), TwoFeatureDataModule())
    measured = len(callback.history)
    assert measured > 0
    assert not drawn
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, callbacks=[callback], logger=logger).fit(TinyClassifier(), TwoFeatureDataModule())
    assert len(drawn) == len(callback.history) - measured > 0


def test_importance_weights_lorenz_figure_without_tensorboard_names_the_fix(tmp_path):
    callback = ImportanceWeights(rho=0.1, lorenz_figure=True)
    with pytest.raises(ValueError, match=r"no TensorBoardLogger.*lorenz_figure=False"):
        trainer(tmp_path, callbacks=[callback], logger=CSVLogger(tmp_path)).fit(
            TinyClassifier(), TwoFeatureDataModule()
        )


def test_importance_weights_reads_plain_xy_batches(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,))), batch_size=10)
    callback = ImportanceWeights(rho=0.1, lorenz_figure=False)
    trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(TinyClassifier(), data)
    assert len(callback.history) == 1


def test_importance_weights_measures_asam_as_asam(tmp_path):
    model_default = _fit_samclassifier(tmp_path, ImportanceWeights(lorenz_figure=False), optimizer="asam")
    as_asam = _fit_samclassifier(
        tmp_path, ImportanceWeights(rho=0.3, scope="all", adaptive=True, lorenz_figure=False), optimizer="asam"
    )
    as_sam = _fit_samclassifier(tmp_path, ImportanceWeights(adaptive=False, lorenz_figure=False), optimizer="asam")
    assert model_default == as_asam
    assert model_default["importance/gini_phantom"] != as_sam["importance/gini_phantom"]


def test_importance_weights_every_n_epochs_zero_measures_once_at_the_end(tmp_path):
    callback = ImportanceWeights(rho=0.1, every_n_epochs=0, lorenz_figure=False)
    trainer(tmp_path, max_epochs=3, callbacks=[callback]).fit(TinyClassifier(), TwoFeatureDataModule())
    assert [h["epoch"] for h in callback.history] == [2]


@pytest.mark.parametrize("lsam_bias", [False, True])
def test_lsam_measurement_in_closed_form_equals_the_autograd_phantom_point(tmp_path, monkeypatch, lsam_bias):
    from lightning_sam.callbacks import _phantom

    def fit(callback):
        torch.manual_seed(0)
        model = SAMClassifier(TwoBranchMLP(hidden=8), optimizer="lsam", rho=0.3, lsam_bias=lsam_bias)
        trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(model, TwoFeatureDataModule(seed=1))
        return callback.history

    closed = []
    head_phantom_point = _phantom._head_phantom_point
    monkeypatch.setattr(_phantom, "_head_phantom_point", lambda *a: closed.append(head_phantom_point(*a)) or closed[-1])
    closed_form = fit(ImportanceWeights(lorenz_figure=False))
    assert closed
    assert all(point is not None for point in closed)
    monkeypatch.setattr(_phantom, "_head_phantom_point", lambda *args: None)  # the generic autograd path
    autograd = fit(ImportanceWeights(lorenz_figure=False))
    assert len(closed_form) == len(autograd) == 2
    for a, b in zip(closed_form, autograd, strict=True):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)
    assert closed_form[-1]["importance/gini_phantom"] != closed_form[-1]["importance/gini_real"]


def test_lsam_measurement_falls_back_to_autograd_when_the_model_transforms_the_heads_output():
    from lightning_sam.callbacks import _phantom
    from lightning_sam.functional import PerturbationSpec

    class Tempered(torch.nn.Module):
        def __init__(self, temperature: float) -> None:
            super().__init__()
            self.body, self.head, self.temperature = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), temperature

        def forward(self, x):
            return self.head(self.body(x)) / self.temperature

    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 4)
    spec = PerturbationSpec(rho=0.5, scope="head")
    plain, tempered = Tempered(1.0), Tempered(2.0)
    assert _phantom._head_phantom_point(plain, plain.head, ["head.weight"], x, y, spec) is not None  # z / 1 = z
    assert _phantom._head_phantom_point(tempered, tempered.head, ["head.weight"], x, y, spec) is None


def test_importance_weights_and_learning_rate_scaling_share_one_phantom_pass(tmp_path):
    def measurement_forwards(callbacks) -> int:
        torch.manual_seed(0)
        model = SAMClassifier(TwoBranchMLP(hidden=8), optimizer="lsam", rho=0.3, lr_schedule="constant")
        calls = []
        model.body.register_forward_hook(lambda module, args, out: calls.append(module.training))
        trainer(tmp_path, max_epochs=1, callbacks=callbacks).fit(model, TwoFeatureDataModule(seed=1))
        return sum(1 for training in calls if not training)  # the measurements run in eval mode

    importance = measurement_forwards([ImportanceWeights(lorenz_figure=False)])
    scaling = measurement_forwards([LearningRateScaling()])
    both = measurement_forwards([ImportanceWeights(lorenz_figure=False), LearningRateScaling()])
    assert importance > 0
    assert importance == scaling == both


def test_importance_weights_of_a_second_fit_measure_the_new_weights(tmp_path):
    # the shared phantom pass is cached per model and step: a second fit repeats the step numbers, not the weights
    model, datamodule = TinyClassifier(), TwoFeatureDataModule()
    for _ in range(2):
        callback = ImportanceWeights(rho=0.5, num_examples=1000, lorenz_figure=False)
        trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model, datamodule)
    model.eval()
    with torch.no_grad():
        weights = importance_weights(model(datamodule.train_dataset.x), datamodule.train_dataset.y)
    assert callback.history[-1]["importance/gini_real"] == pytest.approx(gini_coefficient(weights).item(), abs=1e-6)
