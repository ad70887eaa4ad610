"""SAMClassifier through a real Trainer: the steps equal their definitions, and Lightning's machinery still works."""

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader

from lightning_sam import OPTIMIZERS, SAMClassifier
from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.datamodules import ToyDataModule
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset


class BNBody(nn.Module):
    """A body with BatchNorm, to watch the running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6))
        self.out_features = 6

    def forward(self, x):
        return self.net(x)


def _data(n: int = 32, seed: int = 0) -> FeatureTensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long()
    return FeatureTensorDataset(x, y, torch.stack([y, y], dim=1))


def _trainer(tmp_path=None, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        deterministic=True,
    )
    if tmp_path is not None:
        defaults["default_root_dir"] = tmp_path
    return pl.Trainer(**{**defaults, **kwargs})


def _model(make_body, **kwargs) -> SAMClassifier:
    torch.manual_seed(0)
    return SAMClassifier(make_body(), lr_schedule="constant", momentum=0.9, weight_decay=1e-3, lr=0.1, **kwargs)


def _fit(model: SAMClassifier, data: FeatureTensorDataset, batch_size: int, ckpt_path=None, **trainer_kwargs):
    trainer = _trainer(**trainer_kwargs)
    trainer.fit(model, DataLoader(data, batch_size=batch_size, shuffle=False), ckpt_path=ckpt_path, weights_only=True)
    return trainer


@pytest.mark.parametrize("optimizer", [o for o in OPTIMIZERS if o != "sgd"])
def test_rho_zero_reproduces_sgd_step_for_step(optimizer):
    data = _data(48)
    sgd = _fit(_model(BNBody, optimizer="sgd"), data, batch_size=8, max_steps=6).lightning_module
    sam = _fit(_model(BNBody, optimizer=optimizer, rho=0.0), data, batch_size=8, max_steps=6).lightning_module
    for (name, p), q in zip(sgd.named_parameters(), sam.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    for b, c in zip(sgd.buffers(), sam.buffers()):
        assert torch.equal(b, c)


def _reference_step(model: SAMClassifier, x, y, rho: float, scope: str) -> SAMClassifier:
    """θ ← SGD(θ, ∇L(θ + ε)), with the gradient at θ + ε from a separate forward/backward on a copy."""
    real = copy.deepcopy(model)
    F.cross_entropy(real(x), y).backward()
    perturbed = [p for n, p in real.named_parameters() if scope == "all" or n.startswith(scope)]
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in perturbed]))
    phantom = copy.deepcopy(real)
    with torch.no_grad():
        for (n, p), q in zip(real.named_parameters(), phantom.parameters()):
            if scope == "all" or n.startswith(scope):
                q.add_(rho * p.grad / norm)
    phantom.zero_grad()
    F.cross_entropy(phantom(x), y).backward()
    updated = copy.deepcopy(model)
    base = torch.optim.SGD(updated.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for p, q in zip(updated.parameters(), phantom.parameters()):
        p.grad = q.grad.clone()
    base.step()
    return updated


@pytest.mark.parametrize(
    ("optimizer", "scope", "options"),
    [("sam", "all", {}), ("lsam", "head.weight", {}), ("lsam", "head.", {"lsam_bias": True})],
)
def test_step_equals_reference_computation(optimizer, scope, options):
    data = _data(16)
    model = _model(BNBody, optimizer=optimizer, rho=0.5, **options)
    expected = _reference_step(model, data.x, data.y, rho=0.5, scope=scope)
    _fit(model, data, batch_size=16, max_steps=1)
    for (name, p), q in zip(model.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_perturbed_pass_leaves_batchnorm_buffers_unchanged():
    data = _data(16)
    model = _model(BNBody, optimizer="sam", rho=0.5)
    once = copy.deepcopy(model).train()
    once(data.x)  # exactly one forward at the real parameters
    _fit(model, data, batch_size=16, max_steps=1)
    for (name, b), c in zip(model.body.named_buffers(), once.body.buffers()):
        assert torch.equal(b, c), name
    assert model.body.net[1].num_batches_tracked.item() == 1


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_body_forward_count_per_step(optimizer):
    forwards_per_step = {"sgd": 1, "lsam": 1, "sam": 2, "asam": 2}[optimizer]  # LSAM reuses the body's forward
    model = _model(lambda: TwoBranchMLP(hidden=8), optimizer=optimizer, rho=0.5)
    calls = []
    model.body.register_forward_hook(lambda *_: calls.append(1))
    _fit(model, _data(40), batch_size=8, max_epochs=1)  # 5 steps
    assert len(calls) == 5 * forwards_per_step


def test_global_step_counts_training_batches():
    trainer = _fit(
        _model(lambda: TwoBranchMLP(hidden=8), optimizer="sam", rho=0.1), _data(40), batch_size=8, max_epochs=3
    )
    assert trainer.global_step == 15


def test_max_steps_stops_mid_epoch():
    trainer = _fit(
        _model(lambda: TwoBranchMLP(hidden=8), optimizer="lsam", rho=0.1), _data(40), batch_size=8, max_steps=7
    )
    assert trainer.global_step == 7


class _Preempted(pl.Callback):
    """Ends a run after `epochs` epochs, as a pre-empted job would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resumed_run_continues_and_ends_where_an_uninterrupted_run_ends(tmp_path):
    def run(root, callbacks=(), ckpt_path=None):
        pl.seed_everything(0)
        model = SAMClassifier(TwoBranchMLP(hidden=8), optimizer="sam", rho=0.2, lr=0.05)
        dm = ToyDataModule(batch_size=32, n_train=128, n_val=64, n_probe=16)
        trainer = _trainer(root, max_epochs=4, enable_checkpointing=True, limit_val_batches=None, callbacks=callbacks)
        trainer.fit(model, dm, ckpt_path=ckpt_path, weights_only=True)
        return trainer, model

    full_trainer, full = run(tmp_path / "full")
    first, _ = run(tmp_path / "first", callbacks=[_Preempted(2)])
    assert first.global_step == 8
    ckpt = first.checkpoint_callback.best_model_path
    resumed_trainer, resumed = run(tmp_path / "resumed", ckpt_path=ckpt)
    assert resumed_trainer.global_step == full_trainer.global_step == 16
    for (name, p), q in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert resumed.lr_schedulers().last_epoch == full.lr_schedulers().last_epoch == 16


def test_checkpoint_of_a_different_model_is_refused_with_the_fix(tmp_path):
    model = _model(lambda: TwoBranchMLP(hidden=8), optimizer="sgd")
    trainer = _fit(model, _data(16), batch_size=16, max_steps=1, default_root_dir=tmp_path, enable_checkpointing=True)
    other = _model(BNBody, optimizer="sgd")
    with pytest.raises(ValueError, match="different model") as refusal:
        _fit(other, _data(16), batch_size=16, max_steps=2, ckpt_path=trainer.checkpoint_callback.best_model_path)
    assert "config.yaml" not in str(refusal.value)  # a run folder's config.yaml was not always the checkpoint's


def test_resume_with_other_training_settings_is_refused_with_the_differences(tmp_path):
    body = lambda: TwoBranchMLP(hidden=8)  # noqa: E731
    first = _fit(
        _model(body), _data(16), batch_size=8, max_steps=2, default_root_dir=tmp_path, enable_checkpointing=True
    )
    checkpoint = first.checkpoint_callback.best_model_path

    faster = SAMClassifier(body(), lr_schedule="constant", momentum=0.9, weight_decay=1e-3, lr=0.5)
    with pytest.raises(ValueError, match=r"lr: 0\.1 in the checkpoint, 0\.5 now.*--weights_from"):
        _fit(faster, _data(16), batch_size=8, max_steps=4, ckpt_path=checkpoint)
    resumed = _fit(_model(body, nonfinite="skip"), _data(16), batch_size=8, max_steps=4, ckpt_path=checkpoint)
    assert resumed.global_step == 4  # a failure policy may change
    loaded = SAMClassifier.load_from_checkpoint(checkpoint, body=body(), lr=0.5)  # not a resume: no refusal
    assert loaded.hparams.lr == 0.5


def test_a_checkpoint_from_before_lsam_bias_resumes_only_as_the_lsam_it_trained(tmp_path):
    body = lambda: TwoBranchMLP(hidden=8)  # noqa: E731
    first = _fit(
        _model(body, optimizer="lsam", rho=0.1), _data(16), batch_size=8, max_steps=2, default_root_dir=tmp_path,
        enable_checkpointing=True,
    )  # fmt: skip
    old = torch.load(first.checkpoint_callback.best_model_path, weights_only=True)
    del old["hyper_parameters"]["lsam_bias"]  # written before the option existed: the bias was perturbed
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="lsam_bias: True in the checkpoint, False now"):
        _fit(
            _model(body, optimizer="lsam", rho=0.1),
            _data(16),
            batch_size=8,
            max_steps=4,
            ckpt_path=tmp_path / "old.ckpt",
        )
    resumed = _fit(
        _model(body, optimizer="lsam", rho=0.1, lsam_bias=True), _data(16), batch_size=8, max_steps=4,
        ckpt_path=tmp_path / "old.ckpt",
    )  # fmt: skip
    assert resumed.global_step == 4


def test_resuming_a_cosine_schedule_over_more_steps_is_refused(tmp_path):
    model = SAMClassifier(TwoBranchMLP(hidden=8), lr_schedule="cosine")
    first = _fit(model, _data(16), batch_size=8, max_steps=2, default_root_dir=tmp_path, enable_checkpointing=True)
    longer = SAMClassifier(TwoBranchMLP(hidden=8), lr_schedule="cosine")
    with pytest.raises(ValueError, match="cosine schedule length: 2 steps in the checkpoint, 4 now"):
        _fit(longer, _data(16), batch_size=8, max_steps=4, ckpt_path=first.checkpoint_callback.best_model_path)


def test_bf16_mixed_trains_on_cpu():
    data = _data(64)
    model = _model(BNBody, optimizer="sam", rho=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _fit(model, data, batch_size=16, max_epochs=2, precision="bf16-mixed")
    assert trainer.global_step == 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_lsam_learns_the_toy():
    pl.seed_everything(0)
    model = SAMClassifier(TwoBranchMLP(hidden=16), optimizer="lsam", rho=0.2, lr=0.1)
    trainer = _trainer(max_epochs=5, limit_val_batches=None, log_every_n_steps=1)  # the last step's statistics
    trainer.fit(model, ToyDataModule(batch_size=32, n_train=512, n_val=256, n_probe=16))
    assert trainer.callback_metrics["val/acc"] > 0.95
    for key in ("train/loss", "train/acc", "val/loss", "train/grad_norm", "train/perturbation_norm"):
        assert key in trainer.callback_metrics
    assert trainer.callback_metrics["train/perturbation_norm"].item() == pytest.approx(0.2, rel=1e-4)
    head_size = torch.linalg.matrix_norm(model.head.weight - model.head.weight.mean(dim=0)).item()
    assert trainer.callback_metrics["train/rho_relative"].item() == pytest.approx(0.2 / head_size, rel=1e-4)


@pytest.mark.parametrize(("lsam_bias", "names"), [(False, ["head.weight"]), (True, ["head.weight", "head.bias"])])
def test_lsam_perturbs_the_head_weight_unless_asked_for_the_bias(lsam_bias, names):
    model = SAMClassifier(
        TwoBranchMLP(hidden=4), optimizer="lsam", rho=0.1, lsam_bias=lsam_bias, lr_schedule="constant"
    )
    perturbed = {id(p) for p in model.configure_optimizers().perturbed_params()}
    assert [n for n, p in model.named_parameters() if id(p) in perturbed] == names
    assert model.perturbation_spec.head_bias is lsam_bias
    assert model.perturbation_spec.scope == "head"


class _PoisonedBody(nn.Module):
    """Returns NaN at the phantom point: the second forward of every step."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.out_features = 4
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.lin(x)
        return out * float("nan") if self.calls % 2 == 0 else out


def test_nonfinite_phantom_loss_stops_with_real_parameters_in_place():
    model = _model(_PoisonedBody, optimizer="sam", rho=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="nonfinite skip"):
        _fit(model, _data(16), batch_size=16, max_steps=1)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_nonfinite_phantom_loss_skips_the_step_when_configured():
    model = _model(_PoisonedBody, optimizer="sam", rho=0.1, nonfinite="skip")
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _fit(model, _data(32), batch_size=16, max_epochs=1)
    assert trainer.global_step == 0
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def _nan_input_data(n: int = 32) -> FeatureTensorDataset:
    data = _data(n)
    data.x[3, 1] = float("nan")  # example 3 of the first batch of 16
    return data


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_skipped_step_leaves_parameters_and_batchnorm_statistics_as_before(optimizer):
    model = _model(BNBody, optimizer=optimizer, rho=0.1, nonfinite="skip")
    before = copy.deepcopy(model.state_dict())
    trainer = _fit(model, _nan_input_data(16), batch_size=16, max_epochs=1)
    assert trainer.global_step == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # running_mean/var would be NaN after the forward at θ


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_nonfinite_input_is_blamed_on_the_input_not_on_lr_or_rho(optimizer):
    model = _model(BNBody, optimizer=optimizer, rho=0.1, nonfinite="raise")
    with pytest.raises(FloatingPointError, match=r"input batch itself holds non-finite values \(examples \[3\]"):
        _fit(model, _nan_input_data(16), batch_size=16, max_steps=1)


class _Preemption(Exception):
    pass


class _InterruptedAtPhantom(nn.Module):
    """Raises in the forward at the phantom point, as a pre-emption would."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.out_features = 4
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise _Preemption
        return self.lin(x)


def test_interrupt_at_the_phantom_point_leaves_and_checkpoints_the_real_parameters(tmp_path):
    from pytorch_lightning.callbacks import OnExceptionCheckpoint

    model = _model(_InterruptedAtPhantom, optimizer="sam", rho=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    on_exception = OnExceptionCheckpoint(dirpath=tmp_path)
    trainer = _trainer(max_steps=1, callbacks=[on_exception], enable_checkpointing=True, default_root_dir=tmp_path)
    with pytest.raises(_Preemption):
        trainer.fit(model, DataLoader(_data(16), batch_size=16))
    assert trainer.global_step == 0
    assert not model.optimizers().optimizer.at_phantom_point
    saved = torch.load(on_exception.ckpt_path, weights_only=True)["state_dict"]
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
        assert torch.equal(saved[key], value), key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "adam"}, "optimizer must be one of"),
        ({"rho": -1.0}, "rho must be >= 0"),
        ({"perturbation": "regional"}, "perturbation must be one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAMClassifier(TwoBranchMLP(hidden=4), **kwargs)


def test_body_without_out_features_is_explained():
    with pytest.raises(ValueError, match="out_features"):
        SAMClassifier(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))


def test_validation_loss_is_the_mean_over_examples_with_a_partial_last_batch():
    model = _model(lambda: TwoBranchMLP(hidden=8), optimizer="lsam", rho=0.1)
    val = _data(20, seed=3)  # batches of 8, 8 and 4
    trainer = _trainer(max_epochs=1, limit_val_batches=None)
    trainer.validate(model, DataLoader(val, batch_size=8))
    with torch.no_grad():
        expected = F.cross_entropy(model(val.x), val.y).item()
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(expected, rel=1e-6)


class _PoisonedOnce(BNBody):
    """NaN at the phantom point of the third step only (the sixth forward of a SAM run)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out * float("nan") if self.calls == 6 else out


def test_guard_turns_a_nonfinite_step_into_a_no_op_and_names_it_at_the_end():
    model = _model(_PoisonedOnce, optimizer="sam", rho=0.1)  # nonfinite="guard", the default
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            opt = pl_module.optimizers().optimizer.base_optimizer
            state = {k: v.clone() for k, v in pl_module.state_dict().items()}
            snapshots.append((state, [opt.state[p]["momentum_buffer"].clone() for p in pl_module.parameters()]))

    with pytest.raises(FloatingPointError, match="non-finite gradient at global step 2 "):
        _fit(model, _data(64), batch_size=16, max_epochs=1, callbacks=[Snapshot()])
    (after_2, momentum_2), (after_3, momentum_3) = snapshots[1], snapshots[2]
    for key, value in after_3.items():  # the poisoned third step left everything as the second step did
        assert torch.equal(value, after_2[key]), key
    for a, b in zip(momentum_3, momentum_2):
        assert torch.equal(a, b)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert not any(torch.equal(v, after_2[k]) for k, v in snapshots[3][0].items() if k.endswith("weight"))


@pytest.mark.parametrize("optimizer", ["sam", "lsam"])
def test_a_nonfinite_phantom_loss_leaves_the_real_parameters_finite_by_default(optimizer):
    model = _model(BNBody, optimizer=optimizer, rho=0.1)  # nonfinite="guard", the default
    states = []

    def nan_at_the_second_phantom_point(head, inputs, logits):
        at_phantom = model.optimizers().optimizer.at_phantom_point  # LSAM: the head-only phantom pass
        return logits * float("nan") if at_phantom and model.trainer.global_step == 1 else logits

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            states.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    model.head.register_forward_hook(nan_at_the_second_phantom_point)
    with pytest.raises(FloatingPointError, match="non-finite gradient at global step 1 "):
        _fit(model, _data(48), batch_size=16, max_epochs=1, callbacks=[Snapshot()])
    assert len(states) == 3
    for key, value in states[1].items():
        assert torch.equal(value, states[0][key]), key  # the step from a NaN phantom loss left everything as it was
    for state in states:
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not torch.equal(states[2]["head.weight"], states[1]["head.weight"])  # and training went on after it


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_guarded_step_waits_for_the_device_nowhere(optimizer, monkeypatch):
    syncs = []
    step = SAMClassifier._sam_step

    def counting_step(self, *args):
        # every way Python reads a tensor's value waits for the device: count them inside the step
        patched = {"item", "__bool__", "__int__", "__float__", "tolist"}
        originals = {name: getattr(torch.Tensor, name) for name in patched}
        for name, original in originals.items():
            monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _o=original, _n=name: syncs.append(_n) or _o(t, *a))
        try:
            return step(self, *args)
        finally:
            for name, original in originals.items():
                monkeypatch.setattr(torch.Tensor, name, original)

    monkeypatch.setattr(SAMClassifier, "_sam_step", counting_step)
    _fit(_model(BNBody, optimizer=optimizer, rho=0.1), _data(32), batch_size=16, max_epochs=1)
    assert syncs == []


def test_an_overflowing_step_has_no_phantom_loss_and_leaves_the_epoch_mean_finite():
    # a GradScaler starting at 2^40 overflows the first steps: their ascent gradient is inf, so there is no phantom
    # point (NaN); the epoch's mean phantom loss is over the other steps
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    model = _model(BNBody, optimizer="sam", rho=0.05)
    trainer = _fit(model, _data(256), batch_size=8, max_epochs=1,
                   plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])  # fmt: skip
    assert scaler.get_scale() < 2.0**40  # it overflowed, and lowered its scale
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss_phantom_epoch"])
    assert metrics["train/loss_phantom_epoch"].item() == pytest.approx(metrics["train/loss_epoch"].item(), rel=0.3)


def test_step_statistics_are_computed_at_the_logging_interval_only(monkeypatch):
    computed = []
    rho_relative = SAMClassifier._rho_relative
    monkeypatch.setattr(SAMClassifier, "_rho_relative", lambda self: computed.append(1) or rho_relative(self))
    trainer = _fit(_model(BNBody, optimizer="sam", rho=0.1), _data(96), batch_size=8, max_epochs=1, log_every_n_steps=4)
    assert trainer.global_step == 12
    assert len(computed) == 3  # steps 4, 8 and 12


@pytest.mark.parametrize("optimizer", ["sam", "lsam"])
def test_phantom_loss_epoch_mean_weights_examples_as_the_loss_does(optimizer):
    # ρ = 0: the phantom point is the real one, so the two epoch means must agree, the partial last batch included
    trainer = _fit(_model(BNBody, optimizer=optimizer, rho=0.0), _data(20), batch_size=8, max_epochs=1)
    assert trainer.global_step == 3  # batches of 8, 8 and 4
    metrics = trainer.callback_metrics
    assert metrics["train/loss_phantom_epoch"].item() == pytest.approx(metrics["train/loss_epoch"].item(), rel=1e-6)
