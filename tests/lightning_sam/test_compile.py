"""SAMClassifier(compile=True): an inductor-compiled body trains as the eager one, with no recompile per step."""

import shutil
import sys

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

from lightning_sam import SAMClassifier
from lightning_sam.bodies import SmallCNN
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset
from tests.tiny import trainer
from tests.train_py import TRAIN

STEPS, BATCH = 5, 8
# inductor turns the body's graph into C++ on a CPU
needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's inductor needs a C++ compiler")


def _data() -> FeatureTensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * BATCH, 3, 8, 8, generator=g)  # whole batches only: a smaller last one is a new shape
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()
    return FeatureTensorDataset(x, y, torch.stack([y, y], dim=1))


def _model(optimizer: str, compile: bool) -> SAMClassifier:
    torch.manual_seed(0)
    body = SmallCNN(input_shape=(3, 8, 8))
    return SAMClassifier(body, optimizer=optimizer, rho=0.5, lr=0.1, lr_schedule="constant", compile=compile)


def _fit(model: SAMClassifier, steps: int = STEPS, **kwargs) -> pl.Trainer:
    fit = trainer(None, max_epochs=None, max_steps=steps, limit_val_batches=0, deterministic=True, **kwargs)
    fit.fit(model, DataLoader(_data(), batch_size=BATCH), weights_only=True)
    assert fit.global_step == steps
    return fit


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and counters emptied: every compilation of the test is counted."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@needs_cxx
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "lsam"])
def test_compiled_body_matches_eager_and_compiles_once(optimizer, fresh_dynamo):
    initial = _model(optimizer, compile=False)
    eager = _model(optimizer, compile=False)
    _fit(eager)
    assert fresh_dynamo["frames"]["ok"] == 0
    compiled = _model(optimizer, compile=True)
    _fit(compiled)
    # one graph for the body, traced at the first forward: the phantom swap (SAM: a second forward per step, at
    # other parameter storage) and every later step reuse it
    assert fresh_dynamo["stats"]["unique_graphs"] == 1
    assert fresh_dynamo["frames"]["ok"] == 1
    assert compiled.body._compiled_call_impl is not None
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # compiled in place: the same checkpoints
    for (name, p), q, start in zip(compiled.named_parameters(), eager.parameters(), initial.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)
        assert not torch.equal(p, start), name  # five steps moved every tensor


@needs_cxx
def test_a_run_resumes_compiled_from_an_eager_checkpoint(tmp_path, fresh_dynamo):
    first = _fit(_model("lsam", compile=False), enable_checkpointing=True, default_root_dir=tmp_path)  # one epoch
    checkpoint = first.checkpoint_callback.best_model_path
    resumed = _model("lsam", compile=True)
    fit = trainer(None, max_epochs=None, max_steps=2 * STEPS, limit_val_batches=0, deterministic=True)
    fit.fit(resumed, DataLoader(_data(), batch_size=BATCH), ckpt_path=checkpoint, weights_only=True)
    assert fit.global_step == 2 * STEPS
    assert resumed.hparams.compile
    assert fresh_dynamo["frames"]["ok"] == 1


def test_train_py_takes_model_compile(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train.py", "--model.compile=true", "--print_config"])
    with pytest.raises(SystemExit) as exit_:  # --print_config exits after printing
        TRAIN["main"]()
    assert exit_.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["model"]["compile"] is True
