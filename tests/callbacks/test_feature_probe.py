"""FeatureProbe: what it logs, what it measures, how it fails, and that it leaves the model alone."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_sam.callbacks import FeatureProbe
from tests.tiny import TinyClassifier, TwoFeatureDataModule, assert_same_snapshot, snapshot, trainer


def test_feature_probe_logs_accuracy_and_error_of_every_feature(tmp_path):
    probe = FeatureProbe()
    trainer(tmp_path, max_epochs=2, callbacks=[probe]).fit(TinyClassifier(), TwoFeatureDataModule())
    assert [h["epoch"] for h in probe.history] == [0, 1]
    for name in ("a", "b"):
        acc = probe.history[-1][f"probe/{name}/acc"]
        assert 0.0 <= acc <= 1.0
        assert probe.history[-1][f"probe/{name}/error"] == pytest.approx(1 - acc)
    assert set(probe.probes) == {"a", "b"}


def test_feature_probe_measures_how_well_the_representation_encodes_each_feature(tmp_path):
    # identity representation of x: a is encoded clearly, b faintly (x[:, 1] = ±0.5 + N(0, 1)); the third feature
    # ("noise") has labels drawn independently of x
    datamodule = TwoFeatureDataModule(n=600)
    datamodule.setup()

    def with_noise(ds, seed):
        noise = torch.randint(0, 2, (len(ds),), generator=torch.Generator().manual_seed(seed))
        return DataLoader(TensorDataset(ds.x, torch.cat([ds.features, noise[:, None]], 1)), batch_size=128)

    loaders = (with_noise(datamodule.probe_train_dataset, 1), with_noise(datamodule.probe_test_dataset, 2))
    probe = FeatureProbe(
        representation=lambda model, x: x,
        probe_dataloaders=loaders,
        feature_names=["a", "b", "noise"],
        batch_features=lambda batch: batch[1],
    )
    trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(TinyClassifier(), datamodule)
    result = probe.history[-1]
    assert result["probe/a/acc"] > 0.97
    assert 0.6 < result["probe/b/acc"] < 0.8  # Bayes accuracy Φ(0.5) ≈ 0.69
    assert abs(result["probe/noise/acc"] - 0.5) < 0.1


def test_feature_probe_reads_the_input_of_the_final_linear_by_default(tmp_path):
    probe = FeatureProbe(val_fraction=0.0, l2_grid=[1e-2])
    model, datamodule = TinyClassifier(), TwoFeatureDataModule()
    trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(model, datamodule)
    model.eval()
    with torch.no_grad():
        phi = model.body(datamodule.probe_train_dataset.x)
    torch.testing.assert_close(probe.probes["a"].mean, phi.mean(0))


def test_feature_probe_probes_the_final_weights_when_fit_ends_between_multiples(tmp_path):
    probe = FeatureProbe(every_n_epochs=2)
    trainer(tmp_path, max_epochs=3, callbacks=[probe]).fit(TinyClassifier(), TwoFeatureDataModule())
    assert [h["epoch"] for h in probe.history] == [1, 2]


def test_feature_probe_leaves_parameters_gradients_buffers_modes_and_rng_as_found(tmp_path):
    probe = FeatureProbe()
    model, datamodule = TinyClassifier(), TwoFeatureDataModule()
    fitted = trainer(tmp_path, max_epochs=1, callbacks=[probe])
    fitted.fit(model, datamodule)
    model.train()
    model.body[1].eval()  # a deliberately frozen BatchNorm must stay frozen
    model.head.weight.grad = torch.randn_like(model.head.weight)
    before = snapshot(model)
    probe.probe(fitted, model)
    assert_same_snapshot(before, snapshot(model))


def test_feature_probe_without_feature_labels_names_the_fix(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,))), batch_size=8)
    with pytest.raises(ValueError, match=r"FeatureProbe needs probe data with feature labels.*probe_dataloaders="):
        trainer(tmp_path, max_epochs=1, callbacks=[FeatureProbe()]).fit(TinyClassifier(), data)


def test_feature_probe_on_plain_xy_batches_asks_for_batch_features(tmp_path):
    xy = DataLoader(TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,))), batch_size=8)
    probe = FeatureProbe(probe_dataloaders=(xy, xy), feature_names=["label"])
    with pytest.raises(ValueError, match=r"FeatureProbe could not read feature labels.*batch_features="):
        trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(TinyClassifier(), xy)


def test_feature_probe_with_a_single_class_feature_names_the_feature(tmp_path):
    x = torch.randn(32, 3)
    labels = torch.stack([torch.randint(0, 2, (32,)), torch.zeros(32, dtype=torch.long)], dim=1)
    loader = DataLoader(TensorDataset(x, labels), batch_size=16)
    probe = FeatureProbe(
        probe_dataloaders=(loader, loader), feature_names=["ok", "constant"], batch_features=lambda b: b[1]
    )
    train = DataLoader(TensorDataset(x, labels[:, 0]), batch_size=16)
    with pytest.raises(ValueError, match="FeatureProbe: feature 'constant' has a single class"):
        trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(TinyClassifier(), train)


def test_feature_probe_history_and_probes_resume_from_a_checkpoint(tmp_path):
    pl.seed_everything(0)
    full = FeatureProbe()
    trainer(tmp_path / "full", max_epochs=3, callbacks=[full]).fit(TinyClassifier(), TwoFeatureDataModule())

    pl.seed_everything(0)
    first = FeatureProbe()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_epochs=2, callbacks=[first, checkpoint], enable_checkpointing=True).fit(
        TinyClassifier(), TwoFeatureDataModule()
    )
    resumed = FeatureProbe()
    trainer(tmp_path, max_epochs=3, callbacks=[resumed]).fit(
        TinyClassifier(), TwoFeatureDataModule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history
    assert resumed.history == full.history


def test_feature_probe_honours_every_n_epochs_under_max_steps(tmp_path):
    datamodule = TwoFeatureDataModule()
    probe = FeatureProbe(every_n_epochs=2)
    fitted = trainer(tmp_path, max_epochs=None, max_steps=5 * _steps_per_epoch(datamodule), callbacks=[probe])
    fitted.fit(TinyClassifier(), datamodule)
    assert fitted.max_epochs == -1  # Lightning's "no epoch limit"
    assert [h["epoch"] for h in probe.history] == [1, 3, 4]  # epochs 2 and 4, and the final weights


def test_feature_probe_every_n_epochs_zero_probes_only_at_the_end(tmp_path):
    probe = FeatureProbe(every_n_epochs=0)
    trainer(tmp_path, max_epochs=3, callbacks=[probe]).fit(TinyClassifier(), TwoFeatureDataModule())
    assert [h["epoch"] for h in probe.history] == [2]


def _steps_per_epoch(datamodule: TwoFeatureDataModule) -> int:
    datamodule.setup("fit")
    return len(datamodule.train_dataloader())


class _ConstantProbeFeature(TwoFeatureDataModule):
    def setup(self, stage=None):
        super().setup(stage)
        self.probe_train_dataset.features[:, 1] = 0


def test_feature_probe_names_a_single_class_feature_before_training_starts(tmp_path):
    fitting = trainer(tmp_path, max_epochs=1, callbacks=[FeatureProbe()])
    with pytest.raises(ValueError, match="FeatureProbe: feature 'b' has a single class"):
        fitting.fit(TinyClassifier(), _ConstantProbeFeature())
    assert fitting.global_step == 0
