"""Train every method and seed of one toy setting at once, and measure what the claims need (docs/method.md 4, 5, 8).

A *cell* is one toy (variant, spiral ``turns``, representation block size ``k``); its runs are every method x seed,
stacked (:mod:`experiments.stacked_models`). Paired seeds: a seed fixes the data, the initialisation and the batch
order, the same for every method. Along training, per step and model:

- the batch loss and accuracy at ``θ``;
- the phantom head's effect on each feature (:func:`~lightning_sam.functional.feature_scaling`): the relative gain
  ``ℓ`` and whether a feature flipped, and ``ρ / ‖W_c‖``;
- at matched training loss: at the first evaluated step whose *full*-training-set loss is at or below each level of
  :data:`LOSS_LEVELS`, the Gini coefficients (overall and within class) of the real importance weights and of the
  phantom ones (LSAM: each training batch's closed-form phantom head, :func:`~lightning_sam.functional.head_phantom`,
  as in training). The full set is evaluated for a model at every step while its smoothed batch loss is within a
  factor 2 of its next level (and in the first 32 steps, and once an epoch), so the step found is the first
  crossing up to the rare case of a batch-loss lag;
- the fit: the first evaluated step with training accuracy ``>= 0.99``.

At the end: training and validation accuracy, and the linear-probe error of each feature on the decorrelated probe
split (:func:`~lightning_sam.functional.fit_linear_probe`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from experiments.stacked_models import (
    Params,
    StackedSGD,
    cosine_learning_rates,
    head_logits,
    head_step_gradients,
    mean_cross_entropy,
    representation,
    sam_step_gradients,
    stack_parameters,
    toy_classifier,
)
from lightning_sam.datamodules.toy import ToyDataModule
from lightning_sam.functional import (
    block_directions,
    centred_head,
    feature_scaling,
    fit_linear_probe,
    gini_coefficient,
    head_phantom,
    importance_weights,
    log_relative_gain,
    within_class_gini,
)

LOSS_LEVELS: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01)
FIT_ACCURACY = 0.99
SMOOTHING = 8  # steps in the batch-loss moving average that decides when to evaluate the full training set
DENSE_STEPS = 32  # the full training set is evaluated at every one of the first steps
VARIANTS: dict[str, dict[str, float]] = {
    "paper": {},  # docs/method.md section 8: σ_e = 0.1, every example has nearly the same easy margin
    "spread": {"easy_spread": 0.9, "sigma_easy": 0.0},  # easy margins uniform over [0.1 μ, μ], still separable
}


@dataclass(frozen=True)
class Method:
    """An optimizer and its radius; ``head_bias``: LSAM's phantom also moves the head's bias."""

    optimizer: Literal["sgd", "lsam", "sam"]
    rho: float = 0.0
    head_bias: bool = False

    @property
    def label(self) -> str:
        """``"SGD"``, ``"LSAM ρ=0.2"``, ``"LSAM+bias ρ=0.2"``, ``"SAM ρ=0.05"``."""
        if self.optimizer == "sgd":
            return "SGD"
        return f"{self.optimizer.upper()}{'+bias' if self.head_bias else ''} ρ={self.rho:g}"


@dataclass(frozen=True)
class Cell:
    """One toy: the data variant (:data:`VARIANTS`), the spiral's turns and the block size ``k``."""

    variant: str
    turns: float
    block_size: int

    @property
    def label(self) -> str:
        """``"paper, turns=1, k=1"``."""
        return f"{self.variant}, turns={self.turns:g}, k={self.block_size}"


@dataclass(frozen=True)
class Training:
    """Training settings shared by every run (``SAMClassifier``'s and ``python train.py``'s defaults)."""

    epochs: int = 60
    batch_size: int = 128
    n_train: int = 2000
    n_val: int = 1000
    n_probe: int = 2000
    hidden: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass
class Level:
    """The measurements at the first evaluated step whose full training loss is at or below a level."""

    step: int
    loss: float
    gini_real: float
    gini_phantom: float  # NaN for full SAM (its phantom moves the body too; not measured)
    within_real: float
    within_phantom: float


@dataclass
class RunRecord:
    """One run: its setting, final numbers and the mechanism statistics."""

    cell: Cell
    method: Method
    seed: int
    train_acc: float
    train_loss: float
    val_acc: float
    probe_easy: float  # linear-probe error of the easy feature (probe-test split)
    probe_hard: float
    fit_step: int | None  # first evaluated step with training accuracy >= FIT_ACCURACY
    steps: int
    ell_before: float  # median relative gain ℓ over the batches before the fit (all batches if never fit)
    ell_after: float  # ... from the fit on (NaN if never fit)
    flip_rate: float  # fraction of batches in which the phantom flipped either feature
    flip_before: float
    rho_over_head: float  # median ρ / ‖W_c‖ over the batches before the fit
    levels: dict[float, Level] = field(default_factory=dict)
    batch_loss: list[float] = field(default_factory=list)  # kept for the figures' cell only
    ell_trace: list[float] = field(default_factory=list)  # ditto
    weights: dict[float, dict[str, Tensor]] = field(default_factory=dict)  # ditto, first seed: λ, λ̃, y per level


def reached_levels(loss: float, pending: Sequence[float]) -> list[float]:
    """The pending levels (descending) that a full-training-set loss has reached, in order.

    Example:
        >>> reached_levels(0.05, [0.3, 0.1, 0.03]), reached_levels(0.3, [0.3, 0.1])
        ([0.3, 0.1], [0.3])
    """
    return [level for level in pending if loss <= level]


def _median(values: Tensor) -> float:
    """The median of the finite values, the mean of the two middle ones for an even count (torch's is the lower)."""
    values = values[torch.isfinite(values)]
    return float(torch.quantile(values.double(), 0.5)) if values.numel() else math.nan


def _mean(values: Tensor) -> float:
    return float(values.float().mean()) if values.numel() else math.nan


class _Data:
    """Every seed's splits stacked: ``(n_seeds, N, ...)``."""

    def __init__(self, cell: Cell, seeds: Sequence[int], training: Training) -> None:
        splits: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}
        for seed in seeds:
            dm = ToyDataModule(
                batch_size=training.batch_size,
                seed=seed,
                n_train=training.n_train,
                n_val=training.n_val,
                n_probe=training.n_probe,
                turns=cell.turns,
                **VARIANTS[cell.variant],
            )
            dm.setup("fit")
            for name in ("train", "val", "probe_train", "probe_test"):
                ds = getattr(dm, f"{name}_dataset")
                splits.setdefault(name, []).append((ds.x, ds.y, ds.features))
        self.x = {name: torch.stack([s[0] for s in v]) for name, v in splits.items()}
        self.y = {name: torch.stack([s[1] for s in v]) for name, v in splits.items()}
        self.features = {name: torch.stack([s[2] for s in v]) for name, v in splits.items()}


def train_cell(
    cell: Cell,
    methods: Sequence[Method],
    seeds: Sequence[int],
    training: Training = Training(),
    keep_traces: bool = False,
) -> list[RunRecord]:
    """Trains every method x seed of ``cell`` and returns one record per run (methods outer, seeds inner)."""
    data = _Data(cell, seeds, training)
    inits = stack_parameters([toy_classifier(s, cell.block_size, training.hidden) for s in seeds])
    records: dict[tuple[Method, int], RunRecord] = {}
    for group in ([m for m in methods if m.optimizer != "sam"], [m for m in methods if m.optimizer == "sam"]):
        if group:
            for record in _train_group(cell, group, seeds, training, data, inits, keep_traces):
                records[(record.method, record.seed)] = record
    return [records[(m, s)] for m in methods for s in seeds]


def _train_group(
    cell: Cell,
    methods: Sequence[Method],
    seeds: Sequence[int],
    training: Training,
    data: _Data,
    inits: Params,
    keep_traces: bool,
) -> list[RunRecord]:
    """Trains methods that share a step function (SGD/LSAM, or SAM), all seeds stacked."""
    runs = [(m, i) for m in methods for i in range(len(seeds))]
    seed_index = torch.tensor([i for _, i in runs])
    n_models = len(runs)
    sam = methods[0].optimizer == "sam"
    rho = torch.tensor([0.0 if m.optimizer == "sgd" else m.rho for m, _ in runs])
    head_bias = torch.tensor([m.head_bias for m, _ in runs])
    params = {name: value[seed_index].clone() for name, value in inits.items()}
    optimizer = StackedSGD(training.momentum, training.weight_decay)
    x_train, y_train = data.x["train"][seed_index], data.y["train"][seed_index]  # (S, N, ...): each model's data
    n = x_train.shape[1]
    batch = training.batch_size
    steps_per_epoch = -(-n // batch)
    total = training.epochs * steps_per_epoch
    rates = cosine_learning_rates(training.lr, total)
    dim = 2 * cell.block_size
    easy_u = block_directions(slice(0, cell.block_size), dim)
    hard_u = block_directions(slice(cell.block_size, dim), dim)

    batch_loss = torch.empty(n_models, total)
    batch_acc = torch.empty(n_models, total)
    ell = torch.empty(n_models, total)
    flipped = torch.empty(n_models, total, dtype=torch.bool)
    head_norm = torch.empty(n_models, total)
    pending = [list(LOSS_LEVELS) for _ in range(n_models)]
    fit_step: list[int | None] = [None] * n_models
    levels: list[dict[float, Level]] = [{} for _ in range(n_models)]
    weights: list[dict[float, dict[str, Tensor]]] = [{} for _ in range(n_models)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]

    def evaluate(step: int, models: list[int]) -> None:
        if not models:
            return
        idx = torch.tensor(models, dtype=torch.long)
        sub = {name: p[idx] for name, p in params.items()}
        with torch.no_grad():
            rep = representation(sub, x_train[idx])
            logits = head_logits(rep, sub["head.weight"], sub["head.bias"])
        y = y_train[idx]
        losses = mean_cross_entropy(logits, y)
        accs = (logits.argmax(-1) == y).float().mean(1)
        for j, m in enumerate(models):
            if fit_step[m] is None and accs[j] >= FIT_ACCURACY:
                fit_step[m] = step
            for level in reached_levels(float(losses[j]), pending[m]):
                keep = keep_traces and runs[m][1] == 0
                levels[m][level], kept = _measure_level(
                    step, float(losses[j]), rep[j], logits[j], y[j], sub, j, runs[m][0], batch
                )
                if keep:
                    weights[m][level] = kept
                pending[m].remove(level)

    step = 0
    for _epoch in range(training.epochs):
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators])  # (n_seeds, N) batch order
        for start in range(0, n, batch):
            order = orders[:, start : start + batch][seed_index]  # (S, B)
            x = torch.gather(x_train, 1, order[..., None].expand(-1, -1, x_train.shape[-1]))
            y = torch.gather(y_train, 1, order)
            candidates = _to_evaluate(step, steps_per_epoch, batch_loss, batch_acc, pending, fit_step)
            evaluate(step, candidates)
            if sam:
                grads, result = sam_step_gradients(params, x, y, rho)
            else:
                grads, result = head_step_gradients(params, x, y, rho, head_bias)
            weight = params["head.weight"]
            easy = feature_scaling(weight, result.phantom_weight, easy_u)
            hard = feature_scaling(weight, result.phantom_weight, hard_u)
            batch_loss[:, step] = result.loss
            batch_acc[:, step] = (result.logits.argmax(-1) == y).float().mean(1)
            ell[:, step] = log_relative_gain(easy, hard)
            flipped[:, step] = easy.flipped | hard.flipped
            head_norm[:, step] = torch.linalg.vector_norm(centred_head(weight), dim=(-2, -1))
            optimizer.step(params, grads, rates[step])
            step += 1
    evaluate(total, [m for m in range(n_models) if pending[m] or fit_step[m] is None])

    final = _final_numbers(params, data, seed_index)
    records = []
    for m, (method, i) in enumerate(runs):
        fit = fit_step[m]
        before = slice(0, fit if fit is not None else total)
        after = ell[m, fit:] if fit is not None else torch.empty(0)
        record = RunRecord(
            cell=cell,
            method=method,
            seed=seeds[i],
            **{k: v[m] for k, v in final.items()},
            fit_step=fit,
            steps=total,
            ell_before=_median(ell[m, before]),
            ell_after=_median(after),
            flip_rate=_mean(flipped[m]),
            flip_before=_mean(flipped[m, before]),
            rho_over_head=_median(rho[m] / head_norm[m, before]),
            levels=levels[m],
            weights=weights[m],
        )
        if keep_traces:
            record.batch_loss = batch_loss[m].tolist()
            record.ell_trace = ell[m].tolist()
        records.append(record)
    return records


def _to_evaluate(
    step: int,
    steps_per_epoch: int,
    batch_loss: Tensor,
    batch_acc: Tensor,
    pending: list[list[float]],
    fit_step: list[int | None],
) -> list[int]:
    """The models whose full training loss or accuracy may cross a level now (see the module docstring)."""
    waiting = [m for m in range(len(pending)) if pending[m] or fit_step[m] is None]
    if step < DENSE_STEPS or step % steps_per_epoch == 0:
        return waiting
    recent = slice(max(0, step - SMOOTHING), step)
    loss, acc = batch_loss[:, recent].mean(1), batch_acc[:, recent].mean(1)
    return [
        m
        for m in waiting
        if (pending[m] and loss[m] < 2 * pending[m][0]) or (fit_step[m] is None and acc[m] >= FIT_ACCURACY - 0.04)
    ]


def _measure_level(
    step: int,
    loss: float,
    rep: Tensor,
    logits: Tensor,
    y: Tensor,
    params: Params,
    j: int,
    method: Method,
    batch: int,
) -> tuple[Level, dict[str, Tensor]]:
    """Real and phantom importance weights of one model on its full training set."""
    real = importance_weights(logits, y)
    if method.optimizer == "sgd":
        phantom = real
    elif method.optimizer == "lsam":
        weight, bias = params["head.weight"][j], params["head.bias"][j]
        parts = []
        for start in range(0, len(y), batch):  # each training batch's own phantom head, as in training
            r, t = rep[start : start + batch], y[start : start + batch]
            w_tilde, b_tilde = head_phantom(r, t, weight, bias, method.rho, head_bias=method.head_bias)
            parts.append(importance_weights(torch.nn.functional.linear(r, w_tilde, b_tilde), t))
        phantom = torch.cat(parts)
    else:
        phantom = None
    nan = math.nan
    level = Level(
        step=step,
        loss=loss,
        gini_real=float(gini_coefficient(real)),
        gini_phantom=float(gini_coefficient(phantom)) if phantom is not None else nan,
        within_real=float(within_class_gini(real, y)),
        within_phantom=float(within_class_gini(phantom, y)) if phantom is not None else nan,
    )
    kept = {"real": real, "phantom": phantom if phantom is not None else real, "y": y}
    return level, kept


def _final_numbers(params: Params, data: _Data, seed_index: Tensor) -> dict[str, list[float]]:
    """Training and validation accuracy and each feature's probe error, per model."""
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        reps = {}
        for split in ("train", "val", "probe_train", "probe_test"):
            reps[split] = representation(params, data.x[split][seed_index])
        for split, key in (("train", "train"), ("val", "val")):
            logits = head_logits(reps[split], params["head.weight"], params["head.bias"])
            y = data.y[split][seed_index]
            out[f"{key}_acc"] = (logits.argmax(-1) == y).float().mean(1).tolist()
            if split == "train":
                out["train_loss"] = mean_cross_entropy(logits, y).tolist()
    features_fit, features_test = data.features["probe_train"][seed_index], data.features["probe_test"][seed_index]
    for f, name in enumerate(("easy", "hard")):
        errors = []
        for m in range(len(seed_index)):
            probe = fit_linear_probe(reps["probe_train"][m], features_fit[m, :, f], num_classes=2)
            errors.append(1.0 - probe.accuracy(reps["probe_test"][m], features_test[m, :, f]))
        out[f"probe_{name}"] = errors
    return out
