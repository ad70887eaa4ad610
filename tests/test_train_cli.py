"""`python train.py` as a user runs it: flags, the default job, DDP, the summary, TensorBoard event files."""

import subprocess
import sys
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
SMALL_TOY = ["--data.n_train", "256", "--data.n_val", "128", "--data.n_probe", "256", "--data.batch_size", "64"]


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_default_job_trains_lsam_on_the_toy_and_prints_the_summary(tmp_path):
    result = _train("--trainer.max_epochs", "2", *SMALL_TOY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Finished after 2 epochs, 8 steps." in result.stdout
    assert "tensorboard --logdir runs" in result.stdout
    version = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert list(version.glob("events.out.tfevents.*"))
    assert list((version / "checkpoints").glob("*.ckpt"))
    config = yaml.safe_load((version / "config.yaml").read_text())
    assert config["model"]["optimizer"] == "lsam" and config["model"]["rho"] == 2.0
    assert config["data"]["class_path"] == "lightning_sam.datamodules.ToyDataModule"

    events = EventAccumulator(str(version), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {
        "train/loss_epoch", "val/acc", "probe/easy/acc", "probe/hard/acc", "probe/hard/error",
        "importance/gini_real", "importance/gini_phantom", "scaling/ratio_real", "scaling/ratio_phantom",
        "val/worst_group_acc",
    }  # fmt: skip
    assert expected <= scalars, expected - scalars
    assert len(events.Scalars("probe/hard/acc")) >= 2  # every epoch
    lorenz = [tag for tag in events.Tags()["images"] if "lorenz" in tag]
    assert lorenz and len(events.Images(lorenz[0])) == 2  # one Lorenz figure per epoch


def test_print_config_shows_every_section_without_training(tmp_path):
    result = _train("--print_config", "--model.optimizer", "sam", "--model.rho", "0.1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    assert config["model"]["optimizer"] == "sam" and config["model"]["rho"] == 0.1
    assert {"trainer", "data", "measure", "seed_everything", "ckpt_path"} <= set(config)
    assert not (tmp_path / "runs").exists()


def test_unknown_optimizer_flag_is_rejected_with_the_choices(tmp_path):
    result = _train("--model.optimizer", "adam", cwd=tmp_path)
    assert result.returncode != 0
    assert "model.optimizer" in result.stderr and "lsam" in result.stderr


def test_two_process_ddp_on_cpu_runs_from_the_command_line(tmp_path):
    result = _train(
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "1", *SMALL_TOY, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Finished after 1 epochs, 2 steps." in result.stdout  # 256 examples / (2 devices x 64)


def test_toy_config_runs_through_train_py(tmp_path, monkeypatch, capsys):
    import runpy

    argv = ["train.py", f"--config={ROOT / 'configs' / 'toy.yaml'}", "--trainer.fast_dev_run=true"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    assert "Finished after" in capsys.readouterr().out
