"""The code the README shows runs as shown."""

import re
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_python_block(heading: str) -> str:
    """The first ```python block after the given heading."""
    section = README[README.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_sam_snippet_trains_a_foreign_module():
    namespace: dict = {}
    exec(readme_python_block("## Using SAM in your own LightningModule"), namespace)
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(16)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), norm, torch.nn.ReLU(), torch.nn.Linear(16, 2))
    module = namespace["MySAMModule"](net)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(64, 4)
    data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, data)
    assert trainer.global_step == 8
    assert not module.optimizers().optimizer.at_phantom_point
    assert all(not torch.equal(p, b) for p, b in zip(net.parameters(), before))
    assert norm.num_batches_tracked.item() == 8  # once per step: the phantom pass leaves the statistics alone
