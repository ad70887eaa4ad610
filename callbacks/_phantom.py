"""The phantom-measurement engine: one pass over fixed training batches, at the real and the phantom point.

Every callback that measures at the phantom point (``ImportanceWeights``, ``LearningRateScaling``) describes what it
wants with the same two values, a :class:`~lightning_sam.functional.PerturbationSpec` (which phantom point: from
the model, overridden by explicit arguments) and a :class:`PhantomSampling` (which examples, in which batches), and
asks :func:`phantom_batches` for the result. The result is cached per trainer and model weights (their version
counters), so callbacks that ask for the same measurement share one pass (docs/method.md section 4: each batch gets
its own phantom point, from the same perturbation the optimizer uses).

Under DDP the fixed examples are cut into batches exactly as on one process, and whole batches are dealt to the
ranks (batch ``b`` to rank ``b mod W``): every phantom point is formed from the same examples as on one process, so
statistics gathered with :func:`gather_rows` equal the one-process ones. A sharded model (FSDP2, Lightning's
``ModelParallelStrategy``) gathers its parameters in every forward, so there every rank takes part in every batch,
each with a slice of it (:mod:`~lightning_sam.callbacks._sharded_phantom`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterable, Sized
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_sam.callbacks._evaluation_mode import evaluation_mode
from lightning_sam.callbacks._representation import detect_head, final_linear, head_detected
from lightning_sam.callbacks._sharded_map import read_batches
from lightning_sam.callbacks._sharded_phantom import batch_slices, sharded_phantom_point
from lightning_sam.callbacks.protocols import DeclaresRho, PerturbedModel, TrainData
from lightning_sam.functional.importance import PhantomPoint, head_phantom, phantom_point
from lightning_sam.functional.perturbation import PerturbationSpec, Scope, is_dtensor
from lightning_sam.sharding import is_sharded, reshard


@dataclass(frozen=True)
class PerturbationOverride:
    """A callback's explicit perturbation arguments; ``None`` means "the model's own"."""

    rho: float | None = None
    scope: Scope | None = None
    adaptive: bool | None = None
    eta: float | None = None
    head_bias: bool | None = None

    def __post_init__(self) -> None:
        if self.rho is not None and not self.rho >= 0:
            raise ValueError(f"rho must be >= 0 or None (the model's own), got {self.rho}")
        if self.scope not in (None, "head", "all"):
            raise ValueError(f"scope must be 'head', 'all' or None (the model's own), got {self.scope!r}")
        if self.eta is not None and not self.eta >= 0:
            raise ValueError(f"eta must be >= 0 or None (the model's own), got {self.eta}")

    def resolve(self, model: nn.Module, callback: str, trainer: pl.Trainer | None = None) -> PerturbationSpec:
        """The model's declared phantom point with these arguments in its place.

        A model declaring ``perturbation_spec`` (``SAMClassifier``) gives everything; one declaring only ``rho``
        and ``perturbation_scope`` gives those; for a model declaring neither, a callback of ``trainer`` declaring
        ``perturbation_spec`` (``SharpnessAware``, which trains it) gives everything; otherwise ``rho`` must be
        passed and the scope defaults to ``"all"``.
        """
        training = [c for c in (trainer.callbacks if trainer is not None else []) if isinstance(c, PerturbedModel)]
        if isinstance(model, PerturbedModel):
            declared = model.perturbation_spec
        elif isinstance(model, DeclaresRho):
            declared = PerturbationSpec(rho=float(model.rho), scope=model.perturbation_scope)
        elif training:
            declared = training[0].perturbation_spec
        elif self.rho is None:
            raise ValueError(
                f"{callback} needs the perturbation radius: pass {callback}(rho=0.05) (or the value you train with), "
                f"or train with SharpnessAware(rho=...); {type(model).__name__} declares no `perturbation_spec` or "
                "`rho`."
            )
        else:
            declared = PerturbationSpec(rho=self.rho)
        given = {k: v for k, v in vars(self).items() if v is not None}
        return replace(declared, **given)


@dataclass(frozen=True)
class PhantomSampling:
    """Which training examples are measured, and in which batches.

    Args:
        num_examples: size of the fixed set, chosen once by ``seed``.
        batch_size: examples per phantom point (the perturbation is per batch, as in training); ``None``: the
            training loader's batch size.
        seed: chooses the fixed examples.
    """

    num_examples: int = 1024
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {self.num_examples}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")


class PhantomBatch(NamedTuple):
    """One fixed batch seen at the real and at its own phantom point."""

    batch_index: int  # the batch's position in the one-process order
    positions: Tensor  # (B,) the examples' positions in the fixed set, for gathering per-example values
    y: Tensor  # (B,)
    real_logits: Tensor  # (B, K) at θ
    phantom_logits: Tensor  # (B, K) at θ̃
    phantom_head_weight: Tensor  # (K, D): W̃ (equal to W when the scope leaves the head alone)


def perturbed_parameter_names(
    model: nn.Module, spec: PerturbationSpec, head: str | None = None, updated: Iterable[Tensor] | None = None
) -> list[str]:
    """Names of the parameters the phantom point moves.

    The head's weight (and bias), every trainable one, or the trainable ones of the module ``spec.scope`` names;
    with ``updated`` (the parameters the optimizers update), only those among them: :class:`~lightning_sam.SAM`
    and ``SharpnessAware`` perturb only what the optimizer updates, and the measurement must move what training
    moves (a body left out of the optimizer, with ``requires_grad`` still set, is not perturbed).
    """
    if spec.scope == "all":
        names = [n for n, p in model.named_parameters() if p.requires_grad]
    elif spec.scope != "head":
        module = dict(model.named_modules()).get(spec.scope)
        if module is None:
            raise ValueError(f"scope {spec.scope!r} names no module of {type(model).__name__}")
        names = [f"{spec.scope}.{n}" for n, p in module.named_parameters() if p.requires_grad]
    else:
        name, linear = final_linear(model, head)
        names = [f"{name}.weight"]
        if spec.head_bias and linear.bias is not None:
            names.append(f"{name}.bias")
    if updated is None:
        return names
    ids = {id(p) for p in updated}
    named = dict(model.named_parameters())
    return [n for n in names if id(named[n]) in ids]


def optimized_parameters(trainer: pl.Trainer) -> list[Tensor] | None:
    """The parameters the trainer's optimizers update; ``None`` where there are none to go by.

    Before ``fit`` builds the optimizers, or where ``configure_optimizers`` returns none (Lightning's stand-in has no
    parameters: the module moves its weights some other way), every trainable parameter counts.
    """
    params = [p for optimizer in trainer.optimizers for group in optimizer.param_groups for p in group["params"]]
    return params or None


# model -> (key, batches): the last measurement, shared by every callback asking for the same one at the same step
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Hashable, list[PhantomBatch]]] = weakref.WeakKeyDictionary()


def phantom_batches(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    spec: PerturbationSpec,
    sampling: PhantomSampling,
    head: str | None,
    batch_input: Callable[[Any], Tensor],
    batch_target: Callable[[Any], Tensor],
    dataset: Dataset | None = None,
) -> list[PhantomBatch]:
    """This rank's fixed batches at the real and the phantom point, computed once per model and training step.

    Run in eval mode (no dropout, BatchNorm running statistics) through ``torch.autograd.grad`` and
    ``functional_call``: parameters, gradients, buffers and train/eval modes are left exactly as found.
    """
    dataset = _training_dataset(trainer, dataset)
    sharded = is_sharded(pl_module)
    if sharded:  # an FSDP2 root keeps its gathered parameters after a forward: not the optimizer's tensors
        reshard(pl_module)
    names = perturbed_parameter_names(pl_module, spec, head, optimized_parameters(trainer))
    # the weights themselves are part of the key: in-place updates and loads bump each tensor's version counter
    weights = tuple((id(p), p._version) for p in pl_module.parameters())
    key = (id(trainer), trainer.global_step, weights, spec, tuple(names), sampling, head, batch_input, batch_target,
           id(dataset))  # fmt: skip
    cached = _CACHE.get(pl_module)
    if cached is not None and cached[0] == key:
        return cached[1]
    head_name, head_module = final_linear(pl_module, head)
    weight_name = f"{head_name}.weight"
    whole_scope = names == perturbed_parameter_names(pl_module, spec, head)
    batches = []
    # random augmentations of the training set draw from the global RNG: measuring must not move training's draws
    with evaluation_mode(pl_module), torch.random.fork_rng(devices=[]):
        for index, positions, batch in _rank_batches(trainer, pl_module, dataset, sampling):
            batch = move_data_to_device(batch, pl_module.device)
            y = batch_target(batch)
            point = None
            if not names:  # the scope holds nothing the optimizer updates: the phantom point is the real one
                with torch.no_grad():
                    real_logits = pl_module(batch_input(batch))
                weight = head_module.weight
                whole = weight.detach()
                whole = whole.full_tensor() if is_dtensor(whole) else whole  # type: ignore[attr-defined]
                point = PhantomPoint(real_logits, real_logits, {weight_name: whole})
            elif sharded:  # FSDP2: every rank takes part in every batch, each with a slice of it
                point = sharded_phantom_point(pl_module, batch_input(batch), y, spec, names, weight_name)
            elif spec.scope == "head" and whole_scope:  # the closed form perturbs the scope's every tensor
                point = _head_phantom_point(pl_module, head_module, names, batch_input(batch), y, spec)
            if point is None:
                point = phantom_point(
                    pl_module, batch_input(batch), y, spec.rho, names, adaptive=spec.adaptive, eta=spec.eta
                )
            w_tilde = point.parameters.get(weight_name, head_module.weight.detach())
            positions = positions.to(pl_module.device)
            batches.append(PhantomBatch(index, positions, y, point.real_logits, point.phantom_logits, w_tilde))
    _CACHE[pl_module] = (key, batches)
    return batches


def _head_phantom_point(
    model: nn.Module, head: nn.Linear, names: list[str], x: Tensor, y: Tensor, spec: PerturbationSpec
) -> PhantomPoint | None:
    """LSAM's phantom point in closed form: one forward without a graph gives ``Φ`` and ``z``, then ``W̃``.

    :func:`~lightning_sam.functional.phantom_point` would build the graph, backpropagate into the head and run the
    whole model again at the phantom point; under LSAM only the head moves, so ``z̃ = W̃ Φ + b̃`` (3x cheaper on the
    toy). ``None`` when the head does not see ``(B, D)`` rows or its output is not the model's.
    """
    captured: list[tuple[Tensor, Tensor]] = []  # (Φ, z) of each call of the head
    handle = head.register_forward_hook(lambda _module, args, out: captured.append((args[0], out)))
    try:
        with torch.no_grad():
            real_logits = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        return None
    representation, head_output = captured[0]
    # a model that transforms the head's output (a temperature, say) is exact only on the autograd path
    own_output = head_output is real_logits or (
        isinstance(real_logits, Tensor) and torch.equal(real_logits, head_output)
    )
    if representation.ndim != 2 or not own_output:
        return None
    bias = None if head.bias is None else head.bias.detach()
    w_tilde, b_tilde = head_phantom(
        representation, y, head.weight.detach(), bias, spec.rho, spec.head_bias, spec.adaptive, spec.eta
    )
    phantom = {names[0]: w_tilde}
    if len(names) > 1 and b_tilde is not None:
        phantom[names[1]] = b_tilde  # the bias, when perturbed
    return PhantomPoint(real_logits, F.linear(representation, w_tilde, b_tilde), phantom)


def gather_rows(trainer: pl.Trainer, index: Tensor, rows: Tensor) -> Tensor:
    """Every rank's ``rows`` (``(n, ...)``, keyed by a global ``index`` ``(n,)``), concatenated in index order.

    Keys are batch indices (per-batch statistics) or example positions (per-example weights); ranks may hold
    different numbers of rows, or none.
    """
    if trainer.world_size == 1:
        return rows[index.argsort()]
    # pad every rank to the same length for all_gather, marking padding with index −1
    count = torch.tensor(len(index), device=rows.device)
    capacity = int(trainer.strategy.reduce(count, reduce_op="max").item())
    padded_rows = rows.new_zeros((capacity, *rows.shape[1:]))
    padded_rows[: len(index)] = rows
    padded_index = index.new_full((capacity,), -1)
    padded_index[: len(index)] = index
    all_rows = trainer.strategy.all_gather(padded_rows).flatten(0, 1)
    all_index = trainer.strategy.all_gather(padded_index).flatten(0, 1)
    keep = all_index >= 0
    return all_rows[keep][all_index[keep].argsort()]


def check_head(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    head: str | None,
    batch_input: Callable[[Any], Tensor],
    dataset: Dataset | None = None,
) -> None:
    """Finds (or, when named, validates) the model's head before the first measurement, on two training examples.

    Raises the error of :func:`~lightning_sam.callbacks._representation.detect_head` when no ``nn.Linear`` produces
    the model's output. Without a map-style training set (an iterable dataset) the last ``nn.Linear`` is assumed.
    """
    if head is not None:
        final_linear(pl_module, head)
        return
    if head_detected(pl_module):
        return  # another callback found it already: one forward per model
    try:
        dataset = _training_dataset(trainer, dataset)
    except ValueError:
        return
    train_loader = trainer.train_dataloader
    collate_fn = train_loader.collate_fn if isinstance(train_loader, DataLoader) else None
    examples = [0, 1] if len(cast(Sized, dataset)) > 1 else [0]
    loader = DataLoader(dataset, batch_sampler=[examples], collate_fn=collate_fn, generator=torch.Generator())
    batch = move_data_to_device(next(iter(loader)), pl_module.device)
    detect_head(pl_module, batch_input(batch))


def _training_dataset(trainer: pl.Trainer, dataset: Dataset | None) -> Dataset:
    train_loader = trainer.train_dataloader
    if dataset is None and isinstance(trainer.datamodule, TrainData):
        dataset = trainer.datamodule.train_dataset
    if dataset is None and isinstance(train_loader, DataLoader):
        dataset = train_loader.dataset
    if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            "no map-style training dataset to draw the fixed examples from: pass dataset=... to the callback"
        )
    return dataset


def _rank_batches(
    trainer: pl.Trainer, pl_module: nn.Module, dataset: Dataset, sampling: PhantomSampling
) -> list[tuple[int, Tensor, Any]]:
    """``(batch index, example positions, batch)`` for this rank's whole batches of the fixed examples.

    The batches are cut from the fixed examples in order, as on one process, and collated as in training. By default
    a batch is the one whose gradient the training perturbation uses: the global batch (per-device batch x devices),
    or one device's batch when the model perturbs locally (``SAMClassifier(perturbation="local")``).
    """
    train_loader = trainer.train_dataloader
    batch_size = sampling.batch_size
    if batch_size is None:
        per_device = getattr(train_loader, "batch_size", None)
        if not per_device:
            raise ValueError(
                "the training loader declares no batch_size (it uses a batch_sampler): pass batch_size=... to the "
                "measuring callback, the number of examples per phantom point"
            )
        hparams = getattr(pl_module, "hparams", None)
        local = hparams is not None and hparams.get("perturbation") == "local"
        batch_size = per_device if local else per_device * trainer.world_size
    generator = torch.Generator().manual_seed(sampling.seed)
    chosen = (
        torch.randperm(len(cast(Sized, dataset)), generator=generator)[: sampling.num_examples].sort().values.tolist()
    )
    batches = [chosen[start : start + batch_size] for start in range(0, len(chosen), batch_size)]
    collate_fn = train_loader.collate_fn if isinstance(train_loader, DataLoader) else None
    if is_sharded(pl_module):  # every rank runs every batch: a slice of each
        return batch_slices(trainer, batches, batch_size, dataset, collate_fn)
    own = list(range(trainer.global_rank, len(batches), trainer.world_size))
    collated = read_batches(dataset, [batches[b] for b in own], collate_fn)
    positions = [torch.arange(b * batch_size, b * batch_size + len(batches[b])) for b in own]
    return list(zip(own, positions, collated, strict=True))
