"""The README's "use the callbacks in your own project" example, run as written there (between the markers)."""

import torch


def test_callbacks_work_in_a_plain_project_with_a_torchvision_model_and_xy_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes lightning_logs/ and checkpoints to the working directory
    # --- README example starts ---
    import pytorch_lightning as pl
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_sam.callbacks import FeatureProbe, ImportanceWeights

    class Classifier(pl.LightningModule):  # your own module: automatic optimization, (x, y) batches
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=2)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    images, labels = torch.randn(48, 3, 32, 32), torch.randint(0, 2, (48,))
    attribute = torch.randint(0, 2, (48,))  # any other annotation of the images you want probed
    train = DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True)
    features = torch.stack([labels, attribute], dim=1)  # (N, 2): one column per probed feature
    probe_fit = DataLoader(TensorDataset(images[:32], features[:32]), batch_size=16)
    probe_eval = DataLoader(TensorDataset(images[32:], features[32:]), batch_size=16)

    callbacks = [
        FeatureProbe(  # a probe per feature on the input of resnet's final nn.Linear (fc)
            probe_dataloaders=(probe_fit, probe_eval),
            feature_names=["label", "attribute"],
            batch_features=lambda batch: batch[1],  # (B, 2) feature labels
        ),
        ImportanceWeights(rho=0.05, num_examples=48),  # Gini and Lorenz curves of real vs SAM-phantom weights
    ]
    trainer = pl.Trainer(max_epochs=1, callbacks=callbacks)
    trainer.fit(Classifier(), train)
    # --- README example ends ---

    logged = trainer.callback_metrics
    for key in ("probe/label/acc", "probe/attribute/error", "importance/gini_real", "importance/gini_phantom"):
        assert key in logged and torch.isfinite(logged[key])
    assert len(callbacks[0].history) == 1 and len(callbacks[1].history) == 1
    assert len(list((tmp_path / "lightning_logs").rglob("events.out.tfevents.*"))) == 1
