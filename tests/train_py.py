"""``train.py`` for the tests: its functions (loaded without running ``main``), quick toy flags, an in-process run."""

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = runpy.run_path(str(ROOT / "train.py"), run_name="train")  # its functions, without running main()
QUICK = [
    "--data.init_args.n_train=64", "--data.init_args.n_val=64", "--data.init_args.n_probe=64",
    "--data.init_args.batch_size=64", "--trainer.max_epochs=1", "--trainer.default_root_dir=runs",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--measure.probe=false", "--measure.importance=false", "--measure.scaling=false",
]  # fmt: skip


def run_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[object, str]:
    """``python train.py *args`` in this process (a subprocess costs seconds of imports).

    Returns:
        The exit code (0 when ``main`` returns) and everything it printed.
    """
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    try:
        TRAIN["main"]()
        code: object = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err
