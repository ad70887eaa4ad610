"""Every config in ``configs/`` runs end to end through ``train.py`` on a tiny real-format copy of its dataset."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import yaml

from lightning_sam.datamodules.demos import (
    patch_cifar_md5,
    write_tiny_celeba,
    write_tiny_domainbed,
    write_tiny_dominoes,
    write_tiny_waterbirds,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(path.stem for path in (REPO / "configs").glob("*.yaml"))

# config name -> writes the tiny copy of its dataset under the data root; None: the datamodule generates its data
FIXTURE_WRITERS: dict[str, Callable[[Path], object] | None] = {
    "toy": None,
    "waterbirds": write_tiny_waterbirds,
    "celeba": write_tiny_celeba,
    "cifar_mnist": write_tiny_dominoes,
    "fmnist_mnist": write_tiny_dominoes,
    "pacs": partial(write_tiny_domainbed, dataset="PACS", per_class=2),
    "vlcs": partial(write_tiny_domainbed, dataset="VLCS", per_class=2),
    "office_home": partial(write_tiny_domainbed, dataset="OfficeHome", per_class=2),
    "terra_incognita": partial(write_tiny_domainbed, dataset="TerraIncognita", per_class=2),
}


def offline_overrides(config: dict) -> list[str]:
    """Flags that keep one step of a config offline and cheap on CPU: no ImageNet weights, small images and batches."""
    if config["model"]["body"]["class_path"] != "lightning_sam.bodies.ResNetBody":
        return []  # small models on small inputs already
    return [
        "--model.body.init_args.pretrained=false",  # no ImageNet download in tests
        "--model.body.init_args.depth=18",  # ResNet-50's probes cost a minute on two cores; test_bodies covers it
        "--data.init_args.batch_size=4",
        "--data.init_args.image_size=32",
        "--data.init_args.num_workers=0",
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")  # the tiny copies load as subsets of the canonical releases
@pytest.mark.parametrize("name", CONFIGS)
def test_config_fast_dev_run_on_fixture_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, name: str
) -> None:
    assert name in FIXTURE_WRITERS, f"configs/{name}.yaml has no fixture writer: add one to FIXTURE_WRITERS"
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    root = tmp_path / "data"
    write = FIXTURE_WRITERS[name]
    if write is not None:
        write(root)
    if (root / "cifar-10-batches-py").is_dir():  # in-process, so torchvision checks the tiny files' md5 sums
        patch_cifar_md5(monkeypatch, root / "cifar-10-batches-py")
    argv = [
        "train.py",
        f"--config={REPO / 'configs' / f'{name}.yaml'}",
        f"--data.root={root}",
        "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        *offline_overrides(config),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "train/loss" in out  # the run summary printed after fit
    if "test_domain" in config["data"]["init_args"]:  # the transfer probe ran on the config's target domain
        assert f"transfer/{config['data']['init_args']['test_domain']}/acc" in out
