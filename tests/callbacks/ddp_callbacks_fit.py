"""Runs FeatureProbe, ImportanceWeights and a GiniCoefficient metric on two CPU processes, for test_ddp.py.

test_ddp.py runs ``python -m tests.callbacks.ddp_callbacks_fit <out>`` from the repository root. The model does
not learn (lr 0, no BatchNorm), so a one-process run sees exactly the same weights and any difference comes from how
the callbacks shard, gather and sync. 101 probe examples: the non-shuffling DistributedSampler pads one rank's shard
with a repeated example.
"""

import sys
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from lightning_sam.callbacks import FeatureProbe, ImportanceWeights
from lightning_sam.metrics import GiniCoefficient
from tests import tiny

N = 101
GINI_WEIGHTS = torch.rand(N, generator=torch.Generator().manual_seed(5)) ** 2


class GiniSync(Callback):
    """Each rank feeds an uneven share of GINI_WEIGHTS to a GiniCoefficient and keeps the synced value."""

    def on_train_end(self, trainer, pl_module):
        metric = GiniCoefficient()
        share = GINI_WEIGHTS[:37] if trainer.global_rank == 0 else GINI_WEIGHTS[37:]
        metric.update(share if trainer.world_size > 1 else GINI_WEIGHTS)
        self.value = metric.compute().item()


def run(devices: int, root: Path, batch_size: int = 16) -> dict:
    torch.manual_seed(0)
    model = tiny.TinyClassifier(lr=0.0, batchnorm=False)
    probe = FeatureProbe()
    importance = ImportanceWeights(rho=0.5, num_examples=N, lorenz_figure=False)
    gini = GiniSync()
    fit = tiny.trainer(
        root,
        max_epochs=1,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[probe, importance, gini],
        limit_val_batches=0,
    )
    fit.fit(model, tiny.TwoFeatureDataModule(n=N, batch_size=batch_size))
    return {
        "probe_history": probe.history,
        "probes": {k: (p.weight, p.bias, p.mean, p.std, p.l2) for k, p in probe.probes.items()},
        "importance_history": importance.history,
        "gini_metric": gini.value,
        "rank": fit.global_rank,
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    result = run(devices=2, root=out)
    torch.save(result, out / f"rank{result['rank']}.pt")
