"""torchmetrics ``Metric`` versions of the callbacks' measurements, synced across processes."""

from lightning_sam.metrics.gini_coefficient import GiniCoefficient
from lightning_sam.metrics.per_group_accuracy import PerGroupAccuracy

__all__ = ["GiniCoefficient", "PerGroupAccuracy"]
