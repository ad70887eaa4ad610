"""All four callbacks on SAMClassifier and the toy, read back from TensorBoard's event files."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.callbacks import FeatureProbe, GroupAccuracy, ImportanceWeights, LearningRateScaling
from lightning_sam.datamodules.toy import ToyDataModule
from lightning_sam.sam_classifier import SAMClassifier

NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("gpu", marks=NO_GPU)])
def test_toy_run_writes_probes_ginis_ratios_group_accuracy_and_one_lorenz_image_per_epoch(tmp_path, accelerator):
    torch.manual_seed(0)
    model = SAMClassifier(TwoBranchMLP(hidden=16), optimizer="lsam", rho=1.0, lr_schedule="constant")
    datamodule = ToyDataModule(batch_size=64, n_train=256, n_val=128, n_probe=256)
    logger = TensorBoardLogger(tmp_path, name="toy")
    callbacks = [FeatureProbe(), ImportanceWeights(num_examples=256), LearningRateScaling(), GroupAccuracy()]
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, max_epochs=2, logger=logger, callbacks=callbacks, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule)

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {
        "probe/easy/acc", "probe/hard/acc", "probe/easy/error", "probe/hard/error",
        "importance/gini_real", "importance/gini_phantom",
        "scaling/easy/v", "scaling/hard/v", "scaling/easy/v_phantom", "scaling/hard/v_phantom",
        "scaling/ratio_real", "scaling/ratio_phantom",
        "val/worst_group_acc", "val/avg_acc", "val/group_0/acc",
    }  # fmt: skip
    assert expected <= scalars, expected - scalars
    assert all(len(events.Scalars(tag)) == 2 for tag in ("probe/hard/acc", "scaling/ratio_phantom"))
    assert len(events.Images("importance/lorenz")) == 2
    assert all(0 <= e.value <= 1 for e in events.Scalars("probe/easy/acc") + events.Scalars("probe/hard/acc"))
