from lightning_sam.bodies.two_branch_mlp import TwoBranchMLP

__all__ = ["TwoBranchMLP"]
