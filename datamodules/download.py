"""Deprecated alias of :mod:`lightning_sam.datamodules._download`, private to the datamodules now."""

import warnings

from lightning_sam.datamodules._download import DownloadError, count_files, download_url, extract_archive, file_md5

__all__ = ["DownloadError", "count_files", "download_url", "extract_archive", "file_md5"]

warnings.warn(
    "lightning_sam.datamodules.download is deprecated and will be removed: it is private now, "
    "lightning_sam.datamodules._download",
    DeprecationWarning,
    stacklevel=2,
)
