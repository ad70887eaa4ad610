"""CIFAR-MNIST and FMNIST-MNIST built by the real torchvision loaders from fixture files in their on-disk formats."""

from __future__ import annotations

import shutil
import threading
import warnings
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate
from torchvision.datasets import MNIST

from lightning_sam.datamodules.demos import class_of, patch_cifar_md5, write_tiny_dominoes, write_tiny_mnist_mirror
from lightning_sam.datamodules.dominoes import CifarMnistDataModule, DominoesDataModule, FmnistMnistDataModule

# fixture sizes: MNIST/FashionMNIST 12 train and 6 test images per class, CIFAR-10 10 and 6
SUBSET = "ignore:.*canonical release.*:UserWarning"


def _all(dataset) -> tuple[torch.Tensor, ...]:
    return tuple(default_collate([dataset[i] for i in range(len(dataset))]))


def _built(dm: DominoesDataModule) -> DominoesDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = write_tiny_dominoes(tmp_path / "data")
    patch_cifar_md5(monkeypatch, root / "cifar-10-batches-py")
    return root


@pytest.mark.filterwarnings(SUBSET)
def test_cifar_mnist_stacks_mnist_digit_above_cifar_image_with_matching_labels(sources: Path) -> None:
    dm = _built(CifarMnistDataModule(sources, batch_size=4))
    x, y, features, group = _all(dm.train_dataset)
    assert dm.feature_names == ("mnist", "cifar")
    assert dm.num_classes == 2
    assert dm.num_groups == 4
    assert x.shape == (18, 3, 64, 32)
    assert x.dtype == torch.float32
    assert len(dm.val_dataset) == 2
    assert len(dm.test_dataset) == 12
    # top: a 28x28 MNIST digit zero-padded to 32x32; bottom: a CIFAR image, no padding
    assert x[:, :, :2].abs().sum() == 0
    assert bool((x[:, :, 2:30, 2:30] > 0).all())
    assert bool((x[:, :, 32:] > 0).all())
    mnist = torch.tensor([class_of("mnist", v) for v in x[:, 0, 16, 16].tolist()])
    cifar = torch.tensor([class_of("cifar", v) for v in x[:, 0, 48, 16].tolist()])
    assert torch.equal(mnist, features[:, 0])
    assert torch.equal(torch.tensor([1, 9])[features[:, 1]], cifar)
    assert torch.equal(features[:, 1], y)
    assert torch.equal(features[:, 0], y)
    assert torch.equal(group, 2 * y + features[:, 0])
    assert dm.train_group_counts().tolist() == [9, 0, 0, 9]


@pytest.mark.filterwarnings(SUBSET)
def test_fmnist_mnist_pairs_mnist_digit_c_with_fashion_class_c(sources: Path) -> None:
    dm = _built(FmnistMnistDataModule(sources, batch_size=4, seed=3))
    x, y, features, group = _all(dm.train_dataset)
    assert dm.feature_names == ("mnist", "fmnist")
    assert dm.num_classes == 5
    assert dm.num_groups == 25
    assert x.shape == (55, 3, 64, 32)
    assert len(dm.val_dataset) == 5
    assert [class_of("mnist", v) for v in x[:, 0, 16, 16].tolist()] == y.tolist()
    assert [class_of("fmnist", v) for v in x[:, 1, 48, 16].tolist()] == y.tolist()
    assert torch.equal(group, 5 * y + features[:, 0])


@pytest.mark.filterwarnings(SUBSET)
def test_probe_splits_pair_halves_independently(sources: Path) -> None:
    dm = _built(FmnistMnistDataModule(sources, batch_size=4))
    for dataset in (dm.probe_train_dataset, dm.probe_test_dataset, dm.test_dataset):
        x, y, features, _ = _all(dataset)
        assert [class_of("mnist", v) for v in x[:, 0, 16, 16].tolist()] == features[:, 0].tolist()
        # every (fmnist class, mnist digit) cell holds n_c / 5 examples up to rounding: the halves are independent
        cells = Counter(zip(features[:, 1].tolist(), features[:, 0].tolist()))
        for c in range(5):
            n_c = int((y == c).sum())
            assert all(abs(cells[(c, s)] - n_c / 5) < 1 for s in range(5)), (c, cells)


@pytest.mark.filterwarnings(SUBSET)
def test_training_correlation_p_sets_the_fraction_of_agreeing_halves(sources: Path) -> None:
    dm = _built(DominoesDataModule(sources, spurious="mnist", core="fmnist", class_pairs=[(3, 0), (7, 1)], p=0.6))
    x, y, features, _ = _all(dm.train_dataset)
    assert len(y) == 22  # 24 images of FashionMNIST classes 0 and 1, 90 %
    assert sum(round(0.6 * int((y == c).sum())) for c in (0, 1)) == int((features[:, 0] == y).sum())
    # the spurious half's label indexes class_pairs: label 0 shows digit 3, label 1 digit 7
    assert [class_of("mnist", v) for v in x[:, 0, 16, 16].tolist()] == [(3, 7)[s] for s in features[:, 0].tolist()]


@pytest.mark.filterwarnings(SUBSET)
def test_spurious_on_top_false_puts_the_core_image_on_top(sources: Path) -> None:
    x, y, _, _ = _all(_built(CifarMnistDataModule(sources, spurious_on_top=False)).train_dataset)
    assert bool((x[:, :, :32] > 0).all())
    assert x[:, :, 32:34].abs().sum() == 0
    assert [class_of("cifar", v) for v in x[:, 0, 16, 16].tolist()] == [(1, 9)[c] for c in y.tolist()]


@pytest.mark.filterwarnings(SUBSET)
def test_cache_is_written_once_reused_without_sources_and_loads_with_weights_only(
    sources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _built(CifarMnistDataModule(sources, seed=5))
    cache = first.cache_path
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left behind
    assert torch.load(cache, weights_only=True)["version"] == 1

    def no_rebuild(self):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(DominoesDataModule, "_build", no_rebuild)
    shutil.rmtree(sources / "cifar-10-batches-py")  # the cache alone is enough
    again = _built(CifarMnistDataModule(sources, seed=5, spurious_on_top=False))  # placement is not cached
    assert again.cache_path == cache
    assert torch.equal(_all(again.train_dataset)[1], _all(first.train_dataset)[1])
    assert CifarMnistDataModule(sources, seed=6).cache_path != cache


@pytest.mark.filterwarnings(SUBSET)
def test_corrupt_cache_error_names_the_file_to_delete(sources: Path) -> None:
    dm = CifarMnistDataModule(sources)
    dm.prepare_data()
    dm.cache_path.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match=r"(?s)cannot be read.*delete it"):
        dm.setup("fit")


def test_sources_of_non_canonical_size_load_with_a_warning(sources: Path) -> None:
    with pytest.warns(UserWarning, match="cifar train has 100 images, the canonical release has 50000"):
        _built(CifarMnistDataModule(sources))


def test_missing_source_without_download_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"download=False.*MNIST/raw/train-images-idx3-ubyte"):
        CifarMnistDataModule(tmp_path, download=False).prepare_data()


def test_unreadable_source_folder_is_reported_not_overwritten(sources: Path) -> None:
    (sources / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match="cifar-10-batches-py exists but torchvision cannot read it"):
        CifarMnistDataModule(sources).prepare_data()
    assert (sources / "cifar-10-batches-py" / "data_batch_3").read_bytes() == b"truncated"


def test_download_moves_mnist_into_place_only_when_its_md5_checks_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    md5s = write_tiny_mnist_mirror(mirror)
    # torchvision's downloader reads the response length, which file:// URLs lack: serve the mirror over HTTP
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(mirror)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(MNIST, "resources", list(md5s.items()))
    dm = DominoesDataModule(tmp_path / "data", spurious="mnist", core="cifar")

    # a corrupted archive on the mirror: torchvision's md5 check fails, nothing is kept
    good = (mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(good[:-7])
    with pytest.raises(RuntimeError, match=r"(?s)downloading mnist failed.*corrupted.*nothing was kept"):
        dm._ensure_source("mnist")
    assert list((tmp_path / "data").iterdir()) == []

    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(good)
    try:
        dm._ensure_source("mnist")
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["MNIST"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(MNIST(tmp_path / "data", train=False)) == 60


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"spurious": "svhn"}, "spurious"),
        ({"core": "mnist"}, "spurious and core"),
        ({"class_pairs": [(0, 1)]}, "class_pairs"),
        ({"class_pairs": [(0, 1), (0, 9)]}, "class_pairs"),
        ({"p": 1.5}, "p must"),
        ({"val_fraction": 0.0}, "val_fraction"),
    ],
)
def test_invalid_argument_is_named_in_the_error(tmp_path: Path, kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        DominoesDataModule(tmp_path, **kwargs)
