"""Bodies: modules mapping an input batch to the ``(B, out_features)`` representation the head reads."""

from lightning_sam.bodies.resnet import ResNetBody
from lightning_sam.bodies.small_cnn import SmallCNN
from lightning_sam.bodies.two_branch_mlp import TwoBranchMLP

__all__ = ["ResNetBody", "SmallCNN", "TwoBranchMLP"]
