from lightning_sam.datamodules.celeba import CelebADataModule
from lightning_sam.datamodules.domainbed import DomainBedDataModule
from lightning_sam.datamodules.dominoes import CifarMnistDataModule, DominoesDataModule, FmnistMnistDataModule
from lightning_sam.datamodules.download import DownloadError, download_url, extract_archive
from lightning_sam.datamodules.feature_datamodule import FeatureDataModule
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset
from lightning_sam.datamodules.grouped_image_datamodule import GroupedImageDataModule
from lightning_sam.datamodules.image_feature_dataset import ImageFeatureDataset
from lightning_sam.datamodules.seeded_epoch_sampler import SeededEpochSampler
from lightning_sam.datamodules.toy import ToyDataModule
from lightning_sam.datamodules.waterbirds import WaterbirdsDataModule

__all__ = [
    "CelebADataModule",
    "CifarMnistDataModule",
    "DomainBedDataModule",
    "DominoesDataModule",
    "download_url",
    "DownloadError",
    "extract_archive",
    "FeatureDataModule",
    "FeatureTensorDataset",
    "FmnistMnistDataModule",
    "GroupedImageDataModule",
    "ImageFeatureDataset",
    "SeededEpochSampler",
    "ToyDataModule",
    "WaterbirdsDataModule",
]
