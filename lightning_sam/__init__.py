"""lightning-sam: Sharpness-Aware Minimization for PyTorch Lightning.

With callbacks that show how it balances feature learning (Springer et al., ICLR 2024).
"""

from lightning_sam.batch import FeatureBatch
from lightning_sam.frozen_batchnorm_stats import frozen_batchnorm_stats
from lightning_sam.sam import SAM, Ascent
from lightning_sam.sam_classifier import OPTIMIZERS, SAMClassifier

__all__ = ["OPTIMIZERS", "SAM", "Ascent", "FeatureBatch", "SAMClassifier", "frozen_batchnorm_stats"]
