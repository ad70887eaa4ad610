"""SharpnessAware through a real Trainer: one step equals its definition, and Lightning's machinery still works."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.core.optimizer import _MockOptimizer
from pytorch_lightning.loggers import Logger
from pytorch_lightning.plugins import MixedPrecision
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sam import SAM, SAMClassifier
from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.callbacks import ImportanceWeights, SharpnessAware
from lightning_sam.callbacks._phantom import (
    PerturbationOverride,
    optimized_parameters,
    perturbed_parameter_names,
    phantom_batches,
)
from lightning_sam.functional import PerturbationSpec
from tests import tiny
from tests.callbacks import ddp_sharpness_aware_fit, sharded_sharpness_aware_fit

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
LR = 0.1


class Net(pl.LightningModule):
    """Linear, BatchNorm, ReLU and a linear head; automatic optimization; logs its loss. Knows nothing of SAM."""

    def __init__(self, optimizer: str = "sgd", blowup: float = 1.0) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.blowup = blowup  # multiplies the training loss: > 1e5 overflows fp16
        # no bias before BatchNorm: its gradient is rounding noise, which Adam would blow up to full-size steps
        self.body = nn.Sequential(nn.Linear(3, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.training_steps = 0

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss * self.blowup

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=LR)
        if self.optimizer == "momentum":
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9, weight_decay=1e-3)
        return torch.optim.SGD(self.parameters(), lr=LR)


class MemoryLogger(Logger):
    """Keeps every logged row: ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


def _data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long())


def _net(**kwargs) -> Net:
    torch.manual_seed(0)
    return Net(**kwargs)


def _fit(model, callbacks=(), batch_size: int = 32, data=None, ckpt_path=None, **kwargs) -> pl.Trainer:
    kwargs.setdefault("max_epochs", None if "max_steps" in kwargs else 1)
    trainer = tiny.trainer(kwargs.pop("root", None), callbacks=list(callbacks), limit_val_batches=0, **kwargs)
    loader = DataLoader(data if data is not None else _data(), batch_size=batch_size, shuffle=False)
    trainer.fit(model, loader, ckpt_path=ckpt_path, weights_only=True)
    return trainer


def _reference_step(model: Net, x, y, rho: float, scope: str, adaptive: bool = False, eta: float = 0.01):
    """One SAM step by hand on copies: ``θ ← base(θ, ∇L(θ + ε))``; returns the new model and the once-moved BN."""
    real = copy.deepcopy(model).train()
    F.cross_entropy(real(x), y).backward()  # the one forward that may move BatchNorm's running statistics
    named = dict(real.named_parameters())
    if scope in ("all", "head"):
        perturbed = list(named) if scope == "all" else ["head.weight"]
    else:
        perturbed = [n for n in named if n.startswith(f"{scope}.")]
    g = {n: named[n].grad for n in perturbed}
    scale = {n: named[n].detach().abs() + eta if adaptive and named[n].ndim > 1 else torch.ones(()) for n in perturbed}
    norm = torch.sqrt(sum(((scale[n] * g[n]) ** 2).sum() for n in perturbed))
    phantom = copy.deepcopy(model).train()
    with torch.no_grad():
        for n, p in phantom.named_parameters():
            if n in perturbed:
                p.add_(rho * scale[n] ** 2 * g[n] / norm)
    F.cross_entropy(phantom(x), y).backward()
    updated = copy.deepcopy(model)
    base = updated.configure_optimizers()
    for p, q in zip(updated.parameters(), phantom.parameters(), strict=True):
        p.grad = q.grad.clone()
    base.step()
    return updated, real


# --- one step equals its definition ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "adaptive", "optimizer"),
    [
        ("all", False, "sgd"),
        ("all", True, "sgd"),
        ("head", False, "sgd"),
        ("body", False, "sgd"),
        ("all", False, "adam"),
    ],
    ids=["sam", "asam", "head", "module-name", "sam-adam"],
)
def test_one_step_equals_two_pass_reference(scope, adaptive, optimizer):
    data = _data()
    model = _net(optimizer=optimizer)
    expected, once = _reference_step(model, *data.tensors, rho=0.5, scope=scope, adaptive=adaptive)
    trainer = _fit(model, [SharpnessAware(rho=0.5, scope=scope, adaptive=adaptive)], max_steps=1)
    assert trainer.global_step == 1
    assert model.training_steps == 1
    for (name, p), q in zip(model.named_parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    for (name, b), c in zip(model.named_buffers(), once.buffers(), strict=True):  # BN moved by the real pass only
        torch.testing.assert_close(b, c, rtol=0, atol=1e-7, msg=name)


def test_logged_training_loss_is_the_loss_at_the_real_parameters():
    data = _data()
    model = _net()
    with torch.no_grad():
        at_real = F.cross_entropy(copy.deepcopy(model).train()(data.tensors[0]), data.tensors[1])
    trainer = _fit(model, [SharpnessAware(rho=0.5)], max_steps=1)
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(at_real.item(), abs=1e-7)
    assert model.training_steps == 1  # training_step is not re-run at the phantom point


def test_batchnorm_statistics_move_once_per_step_and_global_step_counts_one_per_step():
    model = _net()
    trainer = _fit(model, [SharpnessAware(rho=0.5)], batch_size=8, max_epochs=2)  # 2 epochs of 4 batches
    assert trainer.global_step == 8
    assert model.training_steps == 8
    assert model.body[1].num_batches_tracked.item() == 8
    limited = _fit(_net(), [SharpnessAware(rho=0.5)], batch_size=8, max_epochs=None, max_steps=5)
    assert limited.global_step == 5


def test_gradient_clipping_clips_the_phantom_gradient():
    data = _data()
    model = _net()
    expected, _ = _reference_step(model, *data.tensors, rho=0.5, scope="all")
    clip = 0.05
    unclipped = [(q - p) / -LR for p, q in zip(model.parameters(), expected.parameters(), strict=True)]  # ∇L(θ + ε)
    norm = torch.sqrt(sum((g**2).sum() for g in unclipped))
    assert norm > clip
    start = [p.detach().clone() for p in model.parameters()]
    _fit(model, [SharpnessAware(rho=0.5)], max_steps=1, gradient_clip_val=clip)
    for p, s, g in zip(model.parameters(), start, unclipped, strict=True):
        torch.testing.assert_close(p, s - LR * g * clip / norm, rtol=0, atol=1e-6)


class TwoVectors(pl.LightningModule):
    """``L = sum(p + q)``: autograd hands back one (expanded) gradient tensor for both parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.p, self.q = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))

    def training_step(self, batch, batch_idx):
        return (self.p + self.q).sum() + 0 * batch[0].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


@pytest.mark.parametrize("weighted", [False, True], ids=["expanded", "shared"])
def test_a_gradient_autograd_shares_between_parameters_is_clipped_once_per_parameter(weighted):
    # sum(p + q): one expanded tensor for both gradients; sum(w * (p + q)): one dense tensor for both
    w = torch.arange(1.0, 5.0) if weighted else torch.ones(4)
    model = TwoVectors()
    callback = SharpnessAware(rho=0.5, loss=lambda module, batch: ((module.p + module.q) * w).sum())
    _fit(model, [callback], max_steps=1, gradient_clip_val=0.5)
    expected = -LR * w * 0.5 / (2 * (w**2).sum()).sqrt()  # ∇ = w for both, clipped to total norm 0.5, once
    torch.testing.assert_close(model.p.detach(), expected)
    torch.testing.assert_close(model.q.detach(), expected)


def test_rho_zero_is_bit_identical_to_no_callback():
    runs = []
    for callbacks in ([], [SharpnessAware(rho=0.0)]):
        torch.manual_seed(0)
        model = tiny.TinyClassifier()  # BatchNorm and dropout: the RNG must be left alone too
        _fit(model, callbacks, batch_size=8, max_epochs=2)
        runs.append(model.state_dict())
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key


# --- the cheap variants ---------------------------------------------------------------------------------------


def test_every_n_steps_and_start_step_apply_sam_on_exactly_those_steps():
    model = _net()
    forwards: dict[int, int] = {}

    def count(*_) -> None:
        forwards[model.trainer.global_step] = forwards.get(model.trainer.global_step, 0) + 1

    model.register_forward_hook(count)
    logger = MemoryLogger()
    trainer = _fit(
        model,
        [SharpnessAware(rho=0.5, every_n_steps=3, start_step=2)],
        batch_size=4,
        max_epochs=None,
        max_steps=12,
        logger=logger,
        log_every_n_steps=1,
    )
    assert trainer.global_step == 12
    sam_steps = {2, 5, 8, 11}
    assert {s for s, n in forwards.items() if n == 2} == sam_steps
    assert all(forwards[s] == 1 for s in set(range(12)) - sam_steps)
    applied = {step: row["sam/applied"] for step, row in logger.rows if "sam/applied" in row}
    assert applied == {s: float(s in sam_steps) for s in range(12)}


def test_resume_mid_run_is_exact(tmp_path):
    def run(root, extra=(), ckpt_path=None) -> tuple[pl.Trainer, Net]:
        model = _net(optimizer="momentum")
        callbacks = [SharpnessAware(rho=0.5, every_n_steps=3), *extra]
        trainer = _fit(
            model, callbacks, batch_size=8, max_epochs=4, root=root, enable_checkpointing=True, ckpt_path=ckpt_path
        )
        return trainer, model

    full_trainer, full = run(tmp_path / "full")
    first, _ = run(tmp_path / "first", extra=[tiny.Preempted(2)])
    assert first.global_step == 8
    trainer, resumed = run(tmp_path / "resumed", ckpt_path=first.checkpoint_callback.best_model_path)
    assert trainer.global_step == full_trainer.global_step == 16
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --- precision ------------------------------------------------------------------------------------------------


def test_bf16_mixed_runs_and_matches_fp32_loosely():
    fp32, bf16 = _net(), _net()
    _fit(fp32, [SharpnessAware(rho=0.5)], batch_size=8, max_epochs=1)
    _fit(bf16, [SharpnessAware(rho=0.5)], batch_size=8, max_epochs=1, precision="bf16-mixed")
    for (name, p), q in zip(fp32.named_parameters(), bf16.parameters(), strict=True):
        assert torch.isfinite(q).all()
        torch.testing.assert_close(q, p, rtol=0, atol=3e-2, msg=name)


def _fp16(scaler: torch.amp.GradScaler) -> MixedPrecision:
    """``16-mixed`` on the CPU: fp16 autocast and a GradScaler (Lightning's flag allows it only on GPUs)."""
    return MixedPrecision("16-mixed", "cpu", scaler=scaler)


def test_16_mixed_matches_fp32_loosely():
    fp32, fp16 = _net(), _net()
    _fit(fp32, [SharpnessAware(rho=0.5)], batch_size=8, max_epochs=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _fit(fp16, [SharpnessAware(rho=0.5)], batch_size=8, max_epochs=1, plugins=[_fp16(scaler)])
    assert scaler.get_scale() == 2.0**10  # no step was skipped
    for (name, p), q in zip(fp32.named_parameters(), fp16.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=3e-2, msg=name)


@pytest.mark.parametrize("where", ["real", "phantom"])
def test_16_mixed_overflow_skips_the_step_with_the_real_parameters_kept(where):
    model = _net(blowup=1e30 if where == "real" else 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def overflowing(module, batch):
        return F.cross_entropy(module(batch[0]), batch[1]) * 1e30

    callback = SharpnessAware(rho=0.5, loss=overflowing if where == "phantom" else None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer = _fit(model, [callback], max_steps=1, plugins=[_fp16(scaler)])
    assert trainer.global_step == 1
    assert scaler.get_scale() == 2.0**9  # the scaler saw the overflow and backed off
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


# --- DDP ------------------------------------------------------------------------------------------------------


def test_two_process_ddp_equals_one_process_with_the_global_batch(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "tests.callbacks.ddp_sharpness_aware_fit", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    two = torch.load(tmp_path / "sharpness_aware.pt", weights_only=True)
    model = ddp_sharpness_aware_fit.make_model()
    data = DataLoader(ddp_sharpness_aware_fit.toy_data(), batch_size=2 * ddp_sharpness_aware_fit.PER_DEVICE_BATCH)
    ddp_sharpness_aware_fit.trainer(devices=1).fit(model, data)
    initial = ddp_sharpness_aware_fit.make_model().state_dict()
    for key, value in model.state_dict().items():
        assert not torch.equal(value, initial[key]), key  # it trained
        torch.testing.assert_close(two[key], value, rtol=0, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sharded_sharpness_aware")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "tests.callbacks.sharded_sharpness_aware_fit", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.parametrize("run", list(sharded_sharpness_aware_fit.RUNS))
def test_two_process_sharded_module_equals_one_process_with_the_global_batch(sharded_runs, run):
    fit = sharded_sharpness_aware_fit
    model = fit.make_model(run)
    data = DataLoader(ddp_sharpness_aware_fit.toy_data(), batch_size=2 * ddp_sharpness_aware_fit.PER_DEVICE_BATCH)
    fit.trainer(run, devices=1).fit(model, data)
    two = torch.load(sharded_runs / f"{run}.pt", weights_only=True)
    initial = fit.make_model(run).state_dict()
    assert two.keys() == initial.keys()
    for key, value in model.state_dict().items():
        assert not torch.equal(value, initial[key]), key  # it trained
        torch.testing.assert_close(two[key], value, rtol=0, atol=1e-5, msg=key)


# --- the measurement callbacks read the phantom point that trains ---------------------------------------------


def test_importance_weights_measures_the_phantom_point_sharpness_aware_trains_with():
    def history(callbacks):
        torch.manual_seed(0)
        _fit(tiny.TinyClassifier(), callbacks, batch_size=8, max_epochs=1)
        return callbacks[-1].history

    def importance(**kwargs) -> ImportanceWeights:
        return ImportanceWeights(num_examples=32, lorenz_figure=False, **kwargs)

    implicit = history([SharpnessAware(rho=0.3, scope="head"), importance()])
    explicit = history([SharpnessAware(rho=0.3, scope="head"), importance(rho=0.3, scope="head")])
    other = history([SharpnessAware(rho=0.3, scope="head"), importance(scope="all")])  # ρ still the callback's
    assert implicit == explicit
    assert implicit[0]["importance/gini_phantom"] != other[0]["importance/gini_phantom"]


class HeadOnly(tiny.TinyClassifier):
    """Trains only its head: the body keeps requires_grad but is not in the optimizer (fine-tuning a head)."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=self.lr)


def _head_only_measured(scope: str, spec: PerturbationSpec | None = None):
    """HeadOnly trained one epoch by SharpnessAware(scope) beside ImportanceWeights.

    Returns the trainer, the model, the spec the measurement resolved, the phantom batches it measures (with
    ``spec``, if given) and its history.
    """
    torch.manual_seed(0)
    model = HeadOnly()
    importance = ImportanceWeights(num_examples=32, lorenz_figure=False)
    trainer = _fit(model, [SharpnessAware(rho=0.3, scope=scope), importance], batch_size=8, max_epochs=1)
    resolved = PerturbationOverride().resolve(model, "ImportanceWeights", trainer)
    batches = phantom_batches(
        trainer, model, spec or resolved, importance.sampling, None, lambda b: b[0], lambda b: b[1]
    )
    return trainer, model, resolved, batches, importance.history


def test_the_measurement_moves_only_what_the_optimizer_updates():
    # SAM perturbs the optimizer's parameters only: scope "all" on a head-only optimizer is the head, weight and bias
    trainer, model, spec, measured, _ = _head_only_measured("all")
    assert perturbed_parameter_names(model, spec, updated=optimized_parameters(trainer)) == ["head.weight", "head.bias"]
    assert len(perturbed_parameter_names(model, spec)) == 6  # every requires_grad tensor, without the optimizer
    head_and_bias = PerturbationSpec(rho=0.3, scope="head", head_bias=True)  # the same tensors, in closed form
    *_, expected, _ = _head_only_measured("all", head_and_bias)
    for got, want in zip(measured, expected, strict=True):
        torch.testing.assert_close(got.phantom_logits, want.phantom_logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.real_logits, want.real_logits, rtol=0, atol=0)
    assert any(not torch.equal(b.phantom_logits, b.real_logits) for b in measured)


def test_a_scope_the_optimizer_does_not_update_measures_the_real_point():
    *_, batches, history = _head_only_measured("body")
    for batch in batches:
        assert torch.equal(batch.phantom_logits, batch.real_logits)
    assert history[0]["importance/gini_phantom"] == history[0]["importance/gini_real"]


def test_without_an_optimizer_every_trainable_parameter_counts():
    # before fit, or with configure_optimizers returning None (Lightning's stand-in optimizer has no parameters)
    assert optimized_parameters(SimpleNamespace(optimizers=[])) is None
    assert optimized_parameters(SimpleNamespace(optimizers=[_MockOptimizer()])) is None
    head = nn.Linear(2, 2)
    assert optimized_parameters(SimpleNamespace(optimizers=[torch.optim.SGD(head.parameters())])) == [
        head.weight,
        head.bias,
    ]


def test_a_module_name_scope_reaches_the_measurement_engine():
    model = tiny.TinyClassifier()
    trainer = tiny.trainer(None, callbacks=[SharpnessAware(rho=0.2, scope="body", adaptive=True)])
    spec = PerturbationOverride().resolve(model, "ImportanceWeights", trainer)
    assert spec == PerturbationSpec(rho=0.2, scope="body", adaptive=True)
    assert perturbed_parameter_names(model, spec) == ["body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"]
    model_declared = SAMClassifier(TwoBranchMLP(hidden=4), optimizer="lsam", rho=0.7)
    assert PerturbationOverride().resolve(model_declared, "ImportanceWeights", trainer).rho == 0.7  # the model's own


# --- errors ---------------------------------------------------------------------------------------------------


class Manual(Net):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


class NoLinear(Net):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.BatchNorm1d(3), nn.Identity()


class TwoOptimizers(Net):
    def configure_optimizers(self):
        return torch.optim.SGD(self.body.parameters(), lr=LR), torch.optim.SGD(self.head.parameters(), lr=LR)


class AlreadySAM(Net):
    def configure_optimizers(self):
        return SAM(torch.optim.SGD(self.parameters(), lr=LR))


@pytest.mark.parametrize(
    ("model", "callback", "trainer_kwargs", "message"),
    [
        (Manual, {}, {}, "needs automatic optimization.*lightning_sam.SAM.*README"),
        (Net, {}, {"accumulate_grad_batches": 2}, r"needs Trainer\(accumulate_grad_batches=1\), got 2.*batch size"),
        (AlreadySAM, {}, {}, "found a lightning_sam.SAM optimizer.*Return the base optimizer"),
        (Net, {"scope": "neck"}, {}, r"scope='neck'\) names no module of Net: pass 'all', 'head' or the name"),
        (Net, {"scope": "body.2"}, {}, r"scope='body.2'\) names a ReLU without trainable weights"),
        (NoLinear, {"scope": "head"}, {}, r"scope='head'\) perturbs the final nn.Linear.*has none: pass scope='all'"),
    ],
    ids=["manual", "accumulate", "sam-optimizer", "no-module", "no-parameters", "no-head"],
)
def test_setup_errors_name_the_fix(model, callback, trainer_kwargs, message):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=message):
        _fit(model(), [SharpnessAware(**callback)], max_steps=1, **trainer_kwargs)


def test_a_wrapping_strategy_is_refused():
    trainer = SimpleNamespace(accumulate_grad_batches=1, strategy=object())  # FSDP needs a GPU to be built
    with pytest.raises(ValueError, match=r"one device, DDP and ModelParallelStrategy, got object.*strategy='ddp'"):
        SharpnessAware().setup(trainer, _net(), "fit")


def test_a_grad_scaler_is_refused_under_model_parallel_strategy():
    precision = SimpleNamespace(scaler=torch.amp.GradScaler("cpu"))
    trainer = SimpleNamespace(accumulate_grad_batches=1, strategy=ModelParallelStrategy(), precision_plugin=precision)
    with pytest.raises(ValueError, match=r"ModelParallelStrategy supports no GradScaler.*bf16-mixed"):
        SharpnessAware().setup(trainer, _net(), "fit")


def test_several_optimizers_are_refused_before_training():
    # Lightning refuses them under automatic optimization before any callback sees them, pointing to manual
    # optimization, where SharpnessAware points to lightning_sam.SAM
    with pytest.raises(RuntimeError, match="multiple optimizers is only supported with manual optimization"):
        _fit(TwoOptimizers(), [SharpnessAware()], max_steps=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": -0.1}, "rho must be >= 0"),
        ({"rho": float("nan")}, "rho must be >= 0"),
        ({"every_n_steps": 0}, "every_n_steps must be an int >= 1"),
        ({"start_step": -1}, "start_step must be an int >= 0"),
        ({"scope": ""}, "scope must be 'head', 'all' or a module name"),
        ({"eta": -1.0}, "eta must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_at_once(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SharpnessAware(**kwargs)


# --- the README's section runs as written ---------------------------------------------------------------------


def _readme_blocks(heading: str) -> list[str]:
    section = README[README.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_callback_and_closure_loop_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default Trainer writes lightning_logs/ into the working directory
    callback_block, closure_block = _readme_blocks("## SAM in your own project")[:2]
    model = _net()
    namespace: dict = {"model": model, "train_loader": DataLoader(_data(), batch_size=16)}
    exec(callback_block, namespace)
    assert namespace["trainer"].global_step == 20
    assert model.training_steps == 20
    namespace = {}
    exec(closure_block, namespace)
    losses = [F.cross_entropy(namespace["model"](namespace["x"]), namespace["y"]).item()]
    assert namespace["loss"].item() > losses[0]  # the last step's loss at θ, before its update
    assert not namespace["optimizer"].at_phantom_point


def test_every_row_of_the_readme_support_table_names_tests_that_exist():
    section = README[README.index("## SAM in your own project") :]
    rows = [line for line in section[: section.index("\n## ", 1)].splitlines() if line.startswith("|")][2:]
    assert len(rows) >= 6
    defined = set(globals())
    for row in rows:
        named = re.findall(r"`(test_\w+)`", row)
        assert named, row
        assert set(named) <= defined, set(named) - defined
