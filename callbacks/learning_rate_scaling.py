"""SAM's learning-rate scaling of the features: the head's weight on each feature, real and phantom.

METHOD.md section 5 (the paper's Figure 2B). With unit directions ``U_k`` of feature ``k`` in representation space,
the body's update for that feature is scaled by ``v_k = ‖W U_k‖`` under SGD and by ``ṽ_k = ‖W̃ U_k‖`` under SAM,
``W̃`` the head at the phantom point. Logged at the end of every ``every_n_epochs``-th training epoch:
``scaling/<feature>/v``, ``scaling/<feature>/v_phantom`` (the mean of ``ṽ_k`` over the per-batch phantom points of
a fixed set of training examples), ``scaling/ratio_real = v_hard / v_easy`` and
``scaling/ratio_phantom = ṽ_hard / ṽ_easy``. SAM raises the ratio: the hard feature learns relatively faster.

Feature directions: the model's declared blocks of representation columns (``model.body.feature_blocks``, the
toy) when present, else the normalised weights of the last probes of a :class:`FeatureProbe` placed before this
callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import move_data_to_device, rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_sam.callbacks.batch_fields import batch_input, batch_target
from lightning_sam.callbacks.evaluation_mode import evaluation_mode
from lightning_sam.callbacks.feature_probe import FeatureProbe
from lightning_sam.callbacks.fixed_subset import fixed_subset_loader
from lightning_sam.callbacks.perturbation import perturbed_parameter_names, resolve_perturbation
from lightning_sam.callbacks.protocols import FeatureBlocks, FeatureData
from lightning_sam.callbacks.representation import final_linear
from lightning_sam.functional.importance import phantom_point
from lightning_sam.functional.learning_rate_scaling import block_directions, feature_weight, probe_directions


class LearningRateScaling(Callback):
    """Logs the head's real and phantom weight on every feature and the hard/easy ratios.

    Computed in eval mode through ``torch.autograd.grad`` and ``torch.func.functional_call``: parameters,
    gradients, buffers and train/eval modes are left exactly as found.

    Attributes:
        history: one dict per measurement: ``epoch``, ``step`` and the logged values.

    Args:
        easy: the feature in the ratios' denominator; default: the first of the datamodule's ``feature_names``
            (ordered easy to hard, METHOD.md section 7), else of the direction source's features.
        hard: the feature in the numerator; default: the second.
        directions: ``"blocks"`` (``model.body.feature_blocks``), ``"probe"`` (a :class:`FeatureProbe`'s last
            probes) or ``"auto"`` (blocks when the model declares them).
        rho: perturbation radius of the phantom point; default: the model's ``rho``.
        scope: ``"head"`` or ``"all"``; default: the model's ``perturbation_scope``, else ``"all"``.
        num_examples: size of the fixed set of training examples.
        batch_size: examples per phantom point; default: the training loader's batch size.
        every_n_epochs: measure after every n-th training epoch.
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
        if rho is not None and not rho >= 0:
            raise ValueError(f"rho must be >= 0 or None (the model's own), got {rho}")
        if scope not in (None, "head", "all"):
            raise ValueError(f"scope must be 'head', 'all' or None (the model's own), got {scope!r}")
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.easy, self.hard = easy, hard
        self.directions = directions
        self.rho, self.scope = rho, scope
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.head = head
        self.batch_input, self.batch_target = batch_input, batch_target
        self.dataset = dataset
        self.seed = seed
        self.history: list[dict[str, float]] = []
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
        resolve_perturbation(pl_module, self.rho, self.scope, "LearningRateScaling")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        for key, value in self.measure(trainer, pl_module).items():
            pl_module.log(key, value, sync_dist=True, reduce_fx="max")  # equal on all ranks: max keeps it exact

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Computes every feature's real and phantom weight and the ratios; returns and records them."""
        directions = self._feature_directions(pl_module)
        if directions is None:
            if not self._warned:
                rank_zero_warn("LearningRateScaling: FeatureProbe has not fitted probes yet; skipping this epoch.")
                self._warned = True
            return {}
        rho, scope = resolve_perturbation(pl_module, self.rho, self.scope, "LearningRateScaling")
        names = perturbed_parameter_names(pl_module, scope, self.head)
        head_name, head = final_linear(pl_module, self.head)
        weight_name = f"{head_name}.weight"
        real = {k: feature_weight(head.weight.detach(), u) for k, u in directions.items()}

        # Σ over examples of ṽ_k at each batch's phantom point, and the example count, for an exact mean over ranks
        totals = torch.zeros(len(directions) + 1, dtype=torch.float64, device=pl_module.device)
        loader = fixed_subset_loader(trainer, self.num_examples, self.batch_size, self.seed, self.dataset)
        with evaluation_mode(pl_module):
            for batch in loader:
                batch = move_data_to_device(batch, pl_module.device)
                y = self.batch_target(batch)
                point = phantom_point(pl_module, self.batch_input(batch), y, rho, names)
                phantom_weight = point.parameters.get(weight_name, head.weight.detach())
                v_tilde = torch.stack([feature_weight(phantom_weight, u) for u in directions.values()])
                totals[:-1] += v_tilde.double() * len(y)
                totals[-1] += len(y)
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        phantom = dict(zip(directions, (totals[:-1] / totals[-1]).float(), strict=True))

        metrics: dict[str, float] = {}
        for k in directions:
            metrics[f"scaling/{k}/v"] = real[k].item()
            metrics[f"scaling/{k}/v_phantom"] = phantom[k].item()
        assert self.easy is not None and self.hard is not None, "setup() sets them"
        metrics["scaling/ratio_real"] = (real[self.hard] / real[self.easy]).item()
        metrics["scaling/ratio_phantom"] = (phantom[self.hard] / phantom[self.easy]).item()
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})
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

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict["history"]]
