"""SAM's learning-rate scaling of the features: the centred head's weight on each feature, real and phantom.

docs/method.md section 5 (the paper's Figures 2B and 4). With unit directions ``U_k`` of feature ``k`` in
representation space and the row-centred head ``W_c``, the body's gradient along feature ``k`` is scaled by
``v_k = ‖W_c U_k‖`` under SGD and by ``ṽ_k`` at the phantom head under SAM. On a fixed seeded set of training batches,
each with its own phantom point, after every ``every_n_epochs``-th training epoch, logged:

- ``scaling/<feature>/v`` (the real head, exact), ``scaling/<feature>/v_phantom`` (median over batches),
  ``scaling/<feature>/contrast`` (two classes, one direction: the signed ``(W_1 − W_0)·u``),
  ``scaling/<feature>/flip_rate`` (share of batches whose phantom reverses the feature, ``⟨a, ã⟩ ≤ 0``);
- ``scaling/ratio_real = v_hard / v_easy``, ``scaling/ratio_phantom`` (median of ``ṽ_hard / ṽ_easy``);
- ``scaling/log_relative_gain``: the median over batches of ``ℓ = log(r_hard / r_easy)``, ``r_k = ṽ_k / v_k``;
  ``> 0`` when the phantom speeds the hard feature relative to the easy one (the paper's mechanism);
- ``scaling/flip_rate``: share of batches whose phantom flips the easy or the hard feature (``ρ`` too large when
  it is not about 0); and a TensorBoard histogram of ``ℓ`` over batches.

Medians, never means of ratios: a ratio explodes when a weight nears 0. Feature directions: the model's declared
blocks of representation columns (``model.body.feature_blocks``, the toy) when present, else the centred weights of
the last probes of a :class:`FeatureProbe` placed before this callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_sam.callbacks._batch_fields import batch_input, batch_target
from lightning_sam.callbacks._measurement import (
    MeasuringCallback,
    check_every_n_epochs,
    log_measurement,
    measurement_due,
    tensorboard,
)
from lightning_sam.callbacks._phantom import (
    PerturbationOverride,
    PhantomSampling,
    check_head,
    gather_rows,
    phantom_batches,
)
from lightning_sam.callbacks._representation import final_linear
from lightning_sam.callbacks.feature_probe import FeatureProbe
from lightning_sam.callbacks.protocols import FeatureBlocks, FeatureData
from lightning_sam.functional.learning_rate_scaling import (
    block_directions,
    feature_contrast,
    feature_scaling,
    log_relative_gain,
    probe_directions,
)


class LearningRateScaling(MeasuringCallback):
    """Logs the centred head's real and phantom weight on every feature, the relative gain, flips and ratios.

    Computed in eval mode through ``torch.autograd.grad`` and ``torch.func.functional_call``: parameters,
    gradients, buffers and train/eval modes are left exactly as found.

    Attributes:
        history: one dict per measurement: ``epoch``, ``step`` and the logged values.

    Args:
        easy: the feature in the ratios' denominator; default: the first of the datamodule's ``feature_names``
            (ordered easy to hard, docs/method.md section 7), else of the direction source's features.
        hard: the feature in the numerator; default: the second.
        directions: ``"blocks"`` (``model.body.feature_blocks``), ``"probe"`` (a :class:`FeatureProbe`'s last
            probes) or ``"auto"`` (blocks when the model declares them).
        rho: perturbation radius of the phantom point; default: the model's (``SAMClassifier.perturbation_spec``).
        scope: ``"head"`` (LSAM) or ``"all"`` (SAM, ASAM); default: the model's, else ``"all"``.
        adaptive: ASAM's perturbation; default: the model's, else ``False``.
        eta: ASAM's ``η``; default: the model's.
        head_bias: with ``scope="head"``, perturb the head's bias too; default: the model's, else ``False``.
        num_examples: size of the fixed set of training examples.
        batch_size: examples per phantom point; default: the training loader's batch size.
        every_n_epochs: measure after every n-th training epoch; ``0``: only after the last.
        head: name of the head module; default: the model's final ``nn.Linear``.
        batch_input: reads the model input from a batch (default ``batch[0]``).
        batch_target: reads the ``(B,)`` labels from a batch (default ``batch[1]``).
        dataset: the training examples to draw from; default: the datamodule's or the training loader's.
        seed: chooses the fixed examples.
    """

    def __init__(
        self,
        easy: str | None = None,
        hard: str | None = None,
        directions: Literal["auto", "blocks", "probe"] = "auto",
        rho: float | None = None,
        scope: Literal["head", "all"] | None = None,
        adaptive: bool | None = None,
        eta: float | None = None,
        head_bias: bool | None = None,
        num_examples: int = 1024,
        batch_size: int | None = None,
        every_n_epochs: int = 1,
        head: str | None = None,
        batch_input: Callable[[Any], Tensor] = batch_input,
        batch_target: Callable[[Any], Tensor] = batch_target,
        dataset: Dataset | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if directions not in ("auto", "blocks", "probe"):
            raise ValueError(f"directions must be 'auto', 'blocks' or 'probe', got {directions!r}")
        if easy is not None and easy == hard:
            raise ValueError(f"easy and hard must name different features, both are {easy!r}")
        self.easy, self.hard = easy, hard
        self.directions = directions
        self.perturbation = PerturbationOverride(rho, scope, adaptive, eta, head_bias)
        self.sampling = PhantomSampling(num_examples, batch_size, seed)
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.head = head
        self.batch_input, self.batch_target = batch_input, batch_target
        self.dataset = dataset
        self._probe: FeatureProbe | None = None
        self._warned = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # measures training only
        self._probe = None
        blocks = self._blocks(pl_module)
        if self.directions == "blocks" and blocks is None:
            raise ValueError(
                f"LearningRateScaling(directions='blocks') needs a model whose body declares feature_blocks "
                f"(a dict feature -> slice of representation columns); {type(pl_module).__name__} has none. "
                "Use directions='probe' with a FeatureProbe callback instead."
            )
        if self.directions == "probe" or blocks is None:
            probes = [c for c in trainer.callbacks if isinstance(c, FeatureProbe)]
            if not probes:
                raise ValueError(
                    "LearningRateScaling needs feature directions: the model declares no body.feature_blocks, so add "
                    "a FeatureProbe callback (its probes' weights give the directions) before LearningRateScaling."
                )
            callbacks = list(trainer.callbacks)
            if callbacks.index(probes[0]) > callbacks.index(self):
                raise ValueError("LearningRateScaling reads FeatureProbe's probes: put FeatureProbe before it.")
            self._probe = probes[0]
            available = list(self._probe.feature_names or ())
        else:
            available = list(blocks)
        datamodule = trainer.datamodule
        order = list(datamodule.feature_names) if isinstance(datamodule, FeatureData) else available
        order = [name for name in order if name in available] or available
        self.easy = self.easy if self.easy is not None else (order[0] if order else None)
        self.hard = self.hard if self.hard is not None else next((n for n in order if n != self.easy), None)
        for role, name in (("easy", self.easy), ("hard", self.hard)):
            if name not in available:
                raise ValueError(
                    f"LearningRateScaling: {role}={name!r} is not among the features with directions {available}; "
                    f"pass {role}=<one of them>."
                )
        self.perturbation.resolve(pl_module, "LearningRateScaling", trainer)  # fail now, not after an epoch

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_head(trainer, pl_module, self.head, self.batch_input, self.dataset)  # fail now, not after an epoch

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if measurement_due(trainer, self.every_n_epochs):
            log_measurement(pl_module, self.measure(trainer, pl_module))

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Computes every feature's real and phantom weight, the gains, flips and ratios; returns and records them."""
        directions = self._feature_directions(pl_module)
        if directions is None:
            if not self._warned:
                rank_zero_warn("LearningRateScaling: FeatureProbe has not fitted probes yet; skipping this epoch.")
                self._warned = True
            return {}
        assert self.easy is not None, "setup() sets it"
        assert self.hard is not None, "setup() sets it"
        spec = self.perturbation.resolve(pl_module, "LearningRateScaling", trainer)
        batches = phantom_batches(
            trainer, pl_module, spec, self.sampling, self.head, self.batch_input, self.batch_target, self.dataset
        )
        weight = final_linear(pl_module, self.head)[1].weight.detach()
        names = list(directions)
        phantom_heads = torch.stack([b.phantom_head_weight for b in batches]) if batches else weight[None][:0]
        scaling = {k: feature_scaling(weight, phantom_heads, u) for k, u in directions.items()}  # each (n_local,)
        easy, hard = scaling[self.easy], scaling[self.hard]
        # per batch: ṽ_k, flip_k for every feature, then ṽ_hard/ṽ_easy and ℓ; gathered in the one-process order
        columns = [
            *(scaling[k].v_phantom for k in names),
            *(scaling[k].flipped for k in names),
            hard.v_phantom / easy.v_phantom,
            log_relative_gain(easy, hard),
        ]
        local = torch.stack([c.double() for c in columns], dim=1)
        index = torch.tensor([b.batch_index for b in batches], dtype=torch.long, device=local.device)
        rows = gather_rows(trainer, index, local)
        v_phantom, flipped = rows[:, : len(names)], rows[:, len(names) : 2 * len(names)].bool()
        ratio_phantom, gain = rows[:, -2], rows[:, -1]

        metrics: dict[str, float] = {}
        for j, k in enumerate(names):
            metrics[f"scaling/{k}/v"] = scaling[k].v.item()
            metrics[f"scaling/{k}/v_phantom"] = _median(v_phantom[:, j])
            metrics[f"scaling/{k}/flip_rate"] = flipped[:, j].double().mean().item()
            if weight.shape[0] == 2 and directions[k].shape[1] == 1:
                metrics[f"scaling/{k}/contrast"] = feature_contrast(weight, directions[k]).item()
        metrics["scaling/ratio_real"] = (hard.v / easy.v).item()
        metrics["scaling/ratio_phantom"] = _median(ratio_phantom)
        metrics["scaling/log_relative_gain"] = _median(gain)
        easy_or_hard = flipped[:, [names.index(self.easy), names.index(self.hard)]].any(dim=1)
        metrics["scaling/flip_rate"] = easy_or_hard.double().mean().item()
        logger = tensorboard(trainer)
        if trainer.is_global_zero and logger is not None and torch.isfinite(gain).any():
            logger.experiment.add_histogram(
                "scaling/log_relative_gain", gain[torch.isfinite(gain)].cpu(), global_step=trainer.global_step
            )
        self.record(trainer, metrics)
        return metrics

    def _feature_directions(self, pl_module: pl.LightningModule) -> dict[str, Tensor] | None:
        """Feature -> ``(D, r)`` orthonormal directions in representation space, on the model's device."""
        dim = final_linear(pl_module, self.head)[1].in_features
        blocks = self._blocks(pl_module)
        if self._probe is None and blocks is not None:
            return {k: block_directions(block, dim).to(pl_module.device) for k, block in blocks.items()}
        assert self._probe is not None, "setup() found the FeatureProbe"
        if not self._probe.probes:
            return None
        return {
            k: probe_directions(p.to(pl_module.device).representation_weight()) for k, p in self._probe.probes.items()
        }

    def _blocks(self, pl_module: pl.LightningModule) -> dict[str, slice] | None:
        body = getattr(pl_module, "body", None)
        return dict(body.feature_blocks) if isinstance(body, FeatureBlocks) else None


def _median(values: Tensor) -> float:
    """The median over batches, the mean of the two middle values for an even count (NaN-free values only)."""
    return torch.nanquantile(values.double(), 0.5).item()
