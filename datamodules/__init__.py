"""One LightningDataModule per dataset family; tiny copies of the datasets in :mod:`lightning_sam.datamodules.demos`."""

import importlib
import warnings

from lightning_sam.datamodules.celeba import CelebADataModule
from lightning_sam.datamodules.domainbed import DomainBedDataModule
from lightning_sam.datamodules.dominoes import CifarMnistDataModule, DominoesDataModule, FmnistMnistDataModule
from lightning_sam.datamodules.feature_datamodule import FeatureDataModule
from lightning_sam.datamodules.grouped_image_datamodule import GroupedImageDataModule
from lightning_sam.datamodules.toy import ToyDataModule
from lightning_sam.datamodules.waterbirds import WaterbirdsDataModule

__all__ = [
    "CelebADataModule",
    "CifarMnistDataModule",
    "DomainBedDataModule",
    "DominoesDataModule",
    "FeatureDataModule",
    "FmnistMnistDataModule",
    "GroupedImageDataModule",
    "ToyDataModule",
    "WaterbirdsDataModule",
]

# names this package exported before it exported datamodules only, and the module that holds each now
_MOVED = {
    "DownloadError": "lightning_sam.datamodules._download",
    "download_url": "lightning_sam.datamodules._download",
    "extract_archive": "lightning_sam.datamodules._download",
    "FeatureTensorDataset": "lightning_sam.datamodules.feature_tensor_dataset",
    "ImageFeatureDataset": "lightning_sam.datamodules.image_feature_dataset",
    "SeededEpochSampler": "lightning_sam.datamodules._seeded_epoch_sampler",
}


def __getattr__(name: str) -> object:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"importing {name} from lightning_sam.datamodules is deprecated and will be removed: import it from "
        f"{_MOVED[name]}",
        DeprecationWarning,
        stacklevel=2,
    )
    value = getattr(importlib.import_module(_MOVED[name]), name)
    globals()[name] = value  # warn once: `from ... import` looks a name up twice
    return value
