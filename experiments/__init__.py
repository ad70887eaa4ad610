"""The toy study built on lightning_sam: run it with ``python -m experiments.toy`` (see that module)."""
