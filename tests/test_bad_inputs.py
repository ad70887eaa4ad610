"""Bad input to ``python train.py``: exit status 2, a message that names the culprit, nothing changed on disk.

Each case runs ``train.py``'s ``main`` in this process (a subprocess costs seconds of imports) in a fresh folder that
holds a finished run (``runs/lightning_logs/version_0``) and the fixture files the cases name.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_sam.datamodules.demos import write_tiny_waterbirds
from tests.train_py import QUICK, ROOT, TRAIN, run_in_process

LAST = "runs/lightning_logs/version_0/checkpoints/last.ckpt"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a finished one-epoch run and the fixture files: a truncated checkpoint, a config, weights..."""
    folder = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(folder)
        monkeypatch.setattr(sys, "argv", ["train.py", *QUICK])
        TRAIN["main"]()
    checkpoint = folder / LAST
    data = checkpoint.read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "garbage.ckpt").write_bytes(bytes(range(256)) * 4)
    shutil.copy(ROOT / "configs" / "toy.yaml", folder / "toy.yaml")
    weights = torch.load(checkpoint, weights_only=True)["state_dict"]
    torch.save(weights, folder / "state_dict.pt")
    torch.save({"state_dict": weights}, folder / "weights_only.ckpt")
    (folder / "a_file.txt").write_text("not a folder\n")
    (folder / "no_last" / "lightning_logs" / "version_3").mkdir(parents=True)
    (folder / "crashed").mkdir()
    shutil.copy(checkpoint, folder / "crashed" / "on_exception.ckpt")
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    """Every folder and file under ``folder``, with a hash of each file's bytes."""
    return {
        str(path.relative_to(folder)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


# (id, flags, what the message must name); every case runs with QUICK before its flags
CASES: list[tuple[str, list[str], list[str]]] = [
    # flags that would bypass or contradict SAMClassifier
    ("lightning-optimizer", ["--optimizer", "Adam"], ["--optimizer", "--model.optimizer"]),
    ("lightning-scheduler", ["--lr_scheduler", "StepLR"], ["--lr_scheduler", "--model.lr_schedule"]),
    (
        "trainer-clipping",
        ["--trainer.gradient_clip_val=1.0"],
        ["--trainer.gradient_clip_val", "--model.gradient_clip_val"],
    ),
    ("trainer-accumulation", ["--trainer.accumulate_grad_batches=2"], ["--trainer.accumulate_grad_batches"]),
    ("unknown-optimizer", ["--model.optimizer=adam"], ["model.optimizer", "lsam"]),
    ("mistyped-flag", ["--model.rhoo=0.1"], ["--model.rhoo", "did you mean --model.rho?"]),
    ("abbreviated-flag", ["--trainer.max_epoch=2"], ["--trainer.max_epoch", "did you mean --trainer.max_epochs?"]),
    ("unknown-schedule", ["--model.lr_schedule=linear"], ["lr_schedule", "cosine"]),
    ("resume-and-weights", ["--ckpt_path", LAST, "--weights_from", LAST], ["--ckpt_path", "--weights_from"]),
    # values the constructors refuse
    ("data-type", ["--data.init_args.n_train=abc"], ["n_train", "abc"]),
    ("data-value", ["--data.init_args.n_train=-3"], ["--data", "ToyDataModule", "n_train"]),
    ("model-rho", ["--model.rho=-1"], ["--model", "rho"]),
    ("model-lr", ["--model.lr=0"], ["--model", "lr must be > 0"]),
    ("measure-interval", ["--measure.every_n_epochs=-1"], ["measure.every_n_epochs"]),
    ("body-value", ["--model.body.init_args.block_size=0"], ["--model.body", "TwoBranchMLP", "block_size"]),
    ("trainer-accelerator", ["--trainer.accelerator=tpu"], ["--trainer", "torch_xla"]),
    # --ckpt_path that cannot resume a run
    ("ckpt-missing", ["--ckpt_path", "missing.ckpt"], ["missing.ckpt", "no such file"]),
    ("ckpt-folder", ["--ckpt_path", "runs"], ["--ckpt_path runs", "folder"]),
    ("ckpt-truncated", ["--ckpt_path", "truncated.ckpt"], ["truncated.ckpt", "truncated"]),
    ("ckpt-empty", ["--ckpt_path", "empty.ckpt"], ["empty.ckpt"]),
    ("ckpt-garbage", ["--ckpt_path", "garbage.ckpt"], ["garbage.ckpt", "not a readable checkpoint"]),
    ("ckpt-config", ["--ckpt_path", "toy.yaml"], ["toy.yaml", "--config"]),
    ("ckpt-state-dict", ["--ckpt_path", "state_dict.pt"], ["state_dict.pt", "--weights_from"]),
    ("ckpt-weights-only", ["--ckpt_path", "weights_only.ckpt"], ["weights_only.ckpt", "--weights_from"]),
    ("ckpt-last-no-runs", ["--ckpt_path=last", "--trainer.default_root_dir=elsewhere"], ["last", "elsewhere"]),
    ("ckpt-last-no-file", ["--ckpt_path=last", "--trainer.default_root_dir=no_last"], ["last", "version_3"]),
    # resuming with settings the checkpoint's optimizer, schedule or callbacks would ignore
    ("resume-lr", ["--ckpt_path", LAST, "--model.lr=0.5"], ["lr: 0.05 in the checkpoint, 0.5 now", "--weights_from"]),
    ("resume-schedule", ["--ckpt_path", LAST, "--model.lr_schedule=constant"], ["lr_schedule", "constant"]),
    ("resume-optimizer", ["--ckpt_path", LAST, "--model.optimizer=sgd"], ["optimizer: 'lsam' in the checkpoint"]),
    ("resume-longer", ["--ckpt_path", LAST, "--trainer.max_epochs=3"], ["cosine schedule length: 1 steps"]),
    ("resume-data", ["--ckpt_path", LAST, "--data.init_args.turns=2"], ["data.init_args.turns", "--weights_from"]),
    ("resume-body", ["--ckpt_path", LAST, "--model.body.init_args.hidden=32"], ["different model", "TwoBranchMLP"]),
    # --weights_from that does not fit
    (
        "weights-truncated",
        ["--weights_from", "truncated.ckpt"],
        ["--weights_from truncated.ckpt", "not a readable checkpoint"],
    ),
    ("weights-config", ["--weights_from", "toy.yaml"], ["toy.yaml", "--config"]),
    ("weights-other-body", ["--weights_from", LAST, "--model.body.init_args.hidden=32"], [LAST, "do not fit"]),
    (
        "stale-on-exception-checkpoint",
        ["--trainer.callbacks+=OnExceptionCheckpoint", "--trainer.callbacks.dirpath=crashed"],
        ["crashed/on_exception.ckpt", "--ckpt_path"],
    ),
    # where the run would write
    ("root-is-a-file", ["--trainer.default_root_dir=a_file.txt"], ["a_file.txt"]),
    ("root-under-a-file", ["--trainer.default_root_dir=a_file.txt/runs"], ["a_file.txt"]),
    ("root-unwritable", ["--trainer.default_root_dir=/proc/lightning_sam/runs"], ["/proc/lightning_sam", "writable"]),
    (
        "logger-version-taken",
        ["--trainer.logger=TensorBoardLogger", "--trainer.logger.save_dir=runs", "--trainer.logger.version=0"],
        ["version_0", "exists"],
    ),
]


@pytest.mark.parametrize(("flags", "culprits"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_by_name_and_changes_nothing(flags, culprits, finished_run, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "case"
    shutil.copytree(finished_run, folder)
    monkeypatch.chdir(folder)
    before = _snapshot(folder)

    code, printed = run_in_process(monkeypatch, capsys, *QUICK, *flags)

    assert code == 2, printed[-3000:]
    error = printed[printed.rindex("error:") :]
    for culprit in culprits:
        assert culprit in error, (culprit, error)
    assert "Traceback" not in printed
    assert "Union subtypes" not in error
    assert _snapshot(folder) == before


def test_the_table_is_large_enough():
    assert len(CASES) >= 20
    assert len({case[0] for case in CASES}) == len(CASES)


def test_a_bad_input_from_the_command_line_ends_with_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *QUICK, "--ckpt_path", "missing.ckpt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "train.py: error: --ckpt_path missing.ckpt: no such file"
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_parse_error_is_the_error_and_a_pointer_to_help_not_a_page_of_usage(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, printed = run_in_process(monkeypatch, capsys, *QUICK, "--model.rhoo=0.1", "--no_such_flag")
    assert code == 2
    assert printed.strip().splitlines() == [
        "train.py: error: unrecognized arguments: --model.rhoo=0.1 --no_such_flag",
        "  --model.rhoo: did you mean --model.rho?",
        "(python train.py --help lists every flag)",
    ]


def test_an_unwritable_root_is_named(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if _writable(locked):
        pytest.skip("permissions do not bind this user (root)")
    monkeypatch.chdir(tmp_path)
    code, printed = run_in_process(monkeypatch, capsys, *QUICK, "--trainer.default_root_dir=locked/runs")
    assert code == 2
    assert "locked" in printed[printed.rindex("error:") :]
    assert "writable" in printed
    assert not list(locked.iterdir())


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").mkdir()
    except PermissionError:
        return False
    (folder / ".probe").rmdir()
    return True


WATERBIRDS = [
    "--config", str(ROOT / "configs" / "waterbirds.yaml"), "--model.body.init_args.pretrained=false",
    "--model.body.init_args.depth=18", "--trainer.default_root_dir=runs", "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false", "--measure.probe=false", "--measure.importance=false",
]  # fmt: skip


def _corrupt_waterbirds(root: Path, count: int) -> list[Path]:
    write_tiny_waterbirds(root)
    damaged = sorted(root.rglob("*.jpg"))[:count]
    for path in damaged:
        path.write_bytes(b"not a jpeg")
    return damaged


def test_check_lists_every_unreadable_file_at_once_and_trains_nothing(tmp_path, monkeypatch, capsys):
    damaged = _corrupt_waterbirds(tmp_path / "data", 2)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    code, out = run_in_process(monkeypatch, capsys, *WATERBIRDS, "--data.root=data", "--check")
    assert code == 2
    assert "2 of the" in out
    assert all(str(path.relative_to(tmp_path)) in out for path in damaged)
    assert _snapshot(tmp_path) == before  # no run folder


def test_check_of_readable_data_says_so_and_trains_nothing(tmp_path, monkeypatch, capsys):
    write_tiny_waterbirds(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    pretrained = [*WATERBIRDS, "--model.body.init_args.pretrained=true"]  # an offline node: no weights to fetch
    code, out = run_in_process(monkeypatch, capsys, *pretrained, "--data.root=data", "--check")
    assert code == 0
    assert "all 44 files are readable" in out
    assert _snapshot(tmp_path) == before


def test_a_corrupt_image_met_in_training_ends_with_one_error_line_naming_it(tmp_path, monkeypatch, capsys):
    (damaged,) = _corrupt_waterbirds(tmp_path / "data", 1)
    monkeypatch.chdir(tmp_path)
    code, out = run_in_process(monkeypatch, capsys, *WATERBIRDS, "--data.root=data", "--data.init_args.num_workers=0")
    assert code == 2
    assert f"train.py: error: Cannot read image {damaged.relative_to(tmp_path)}" in out
    assert "--check" in out
    assert "Traceback" not in out


def test_ckpt_path_last_passes_over_runs_without_a_checkpoint_and_config_names_what_was_resumed(
    finished_run, tmp_path, monkeypatch, capsys
):
    shutil.copytree(finished_run / "runs", tmp_path / "runs")
    (tmp_path / "runs" / "lightning_logs" / "version_7").mkdir()  # a run stopped before its first checkpoint
    monkeypatch.chdir(tmp_path)
    code, out = run_in_process(monkeypatch, capsys, *QUICK, "--ckpt_path=last")
    assert code == 0, out
    config = (tmp_path / "runs" / "lightning_logs" / "version_8" / "config.yaml").read_text()
    assert f"ckpt_path: {(tmp_path / LAST).resolve()}" in config
    assert TRAIN["RESUME_ENV"] not in os.environ  # DDP's child processes read it; it does not outlive the run


def test_fast_dev_run_checks_the_checkpoint_to_resume(finished_run, monkeypatch, capsys):
    monkeypatch.chdir(finished_run)
    code, out = run_in_process(monkeypatch, capsys, *QUICK, "--trainer.fast_dev_run=true", "--ckpt_path=toy.yaml")
    assert code == 2
    assert "toy.yaml" in out
    assert "--config" in out


class _ShapeBug(torch.nn.Module):
    """A body whose forward fails: a bug in code, not a bad input."""

    out_features = 2

    def forward(self, x):
        return torch.zeros(1, 2, requires_grad=True)  # one row, whatever the batch: cross_entropy's ValueError


def test_a_bug_in_the_model_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "shape_bug", type(sys)("shape_bug"))
    sys.modules["shape_bug"].ShapeBug = _ShapeBug
    with pytest.raises(ValueError, match="batch_size"):
        run_in_process(monkeypatch, capsys, *QUICK, "--model.body=shape_bug.ShapeBug")
