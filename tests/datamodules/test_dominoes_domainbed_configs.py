"""The dominoes and DomainBed configs run end to end through ``train.py`` on tiny real-format fixture data."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from domainbed_fixtures import write_domainbed
from dominoes_fixtures import write_dominoes_sources

REPO = Path(__file__).resolve().parents[2]
DOMINOES = ["cifar_mnist", "fmnist_mnist"]
DOMAINBED = {"pacs": "PACS", "vlcs": "VLCS", "office_home": "OfficeHome", "terra_incognita": "TerraIncognita"}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", DOMINOES + list(DOMAINBED))
def test_config_fast_dev_run_on_fixture_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, name: str
) -> None:
    root = tmp_path / "data"
    argv = [
        "train.py",
        f"--config={REPO / 'configs' / f'{name}.yaml'}",
        f"--data.root={root}",
        "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    if name in DOMAINBED:
        write_domainbed(root, DOMAINBED[name], per_class=2)
        argv += [
            "--model.body.init_args.pretrained=false",  # no ImageNet download in tests
            "--model.body.init_args.depth=18",  # the ResNet-50 path is covered by the Waterbirds config test
            # keep the ResNet-50 step cheap on CPU
            "--data.init_args.batch_size=4",
            "--data.init_args.image_size=32",
            "--data.init_args.num_workers=0",
        ]
    else:
        write_dominoes_sources(root, monkeypatch)  # in-process, so CIFAR-10's md5 list is the fixture's
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "train/loss" in out  # the run summary printed after fit
    if name in DOMAINBED:  # the transfer probe ran on the config's target domain
        assert "transfer/" in out and "/acc" in out
