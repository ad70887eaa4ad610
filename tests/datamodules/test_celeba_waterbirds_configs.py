"""The CelebA and Waterbirds configs run end to end through ``train.py`` on tiny real-format fixture data."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from lightning_sam.datamodules.tiny_celeba import write_tiny_celeba
from lightning_sam.datamodules.tiny_waterbirds import write_tiny_waterbirds

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.filterwarnings("ignore:.*loading this subset")
@pytest.mark.parametrize("name", ["waterbirds", "celeba"])
def test_config_fast_dev_run_on_fixture_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, name: str
) -> None:
    write_tiny_waterbirds(tmp_path / "data")
    write_tiny_celeba(tmp_path / "data")
    argv = [
        "train.py",
        f"--config={REPO / 'configs' / f'{name}.yaml'}",
        f"--data.root={tmp_path / 'data'}",
        "--trainer.fast_dev_run=true",
        "--model.body.init_args.pretrained=false",  # no ImageNet download in tests
        # keep the ResNet-50 step cheap on CPU
        "--data.init_args.batch_size=4",
        "--data.init_args.image_size=32",
        "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    assert "train/loss" in capsys.readouterr().out  # the run summary printed after fit
