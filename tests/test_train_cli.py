"""`python train.py` as a user runs it: flags, the default job, the summary, TensorBoard event files.

Two DDP processes from the command line: tests/test_train_ddp_equality.py.
"""

import runpy
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_sam import SAMClassifier
from lightning_sam.bodies import SmallCNN, TwoBranchMLP
from lightning_sam.datamodules import ToyDataModule
from tests.train_py import QUICK, ROOT, TRAIN, run_in_process

SMALL_TOY = ["--data.n_train", "256", "--data.n_val", "128", "--data.n_probe", "256", "--data.batch_size", "64"]


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_default_job_trains_lsam_on_the_toy_and_prints_the_summary(tmp_path):
    # 8 steps: a logging interval of 4 writes the step statistics (the default of 10 would not, in so short a run)
    result = _train("--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "4", *SMALL_TOY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Finished after 2 epochs, 8 steps." in result.stdout
    assert "tensorboard --logdir runs/toy/lightning_logs" in result.stdout
    assert "Checkpoint:" in result.stdout
    for key in ("scaling/log_relative_gain", "scaling/flip_rate", "importance/gini_within_class_real",
                "importance/gini_within_class_phantom", "train/rho_relative"):  # fmt: skip
        assert key in result.stdout.split("Mechanism:")[1], key  # the mechanism, plainly, with what it means
    assert "log relative gain > 0" in result.stdout
    version = tmp_path / "runs" / "toy" / "lightning_logs" / "version_0"
    assert list(version.glob("events.out.tfevents.*"))
    assert list((version / "checkpoints").glob("*.ckpt"))
    config = yaml.safe_load((version / "config.yaml").read_text())
    assert config["model"]["optimizer"] == "lsam"
    assert config["model"]["rho"] == 0.2
    assert config["data"]["class_path"] == "lightning_sam.datamodules.ToyDataModule"

    events = EventAccumulator(str(version), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {
        "train/loss_epoch", "val/acc", "probe/easy/acc", "probe/hard/acc", "probe/hard/error",
        "importance/gini_real", "importance/gini_phantom", "scaling/ratio_real", "scaling/ratio_phantom",
        "val/worst_group_acc", "importance/gini_within_class_phantom", "scaling/log_relative_gain",
        "scaling/flip_rate",
    }  # fmt: skip
    assert events.Tags()["histograms"] == ["scaling/log_relative_gain"]
    assert expected <= scalars, expected - scalars
    assert len(events.Scalars("probe/hard/acc")) >= 2  # every epoch
    lorenz = [tag for tag in events.Tags()["images"] if "lorenz" in tag]
    assert lorenz
    assert len(events.Images(lorenz[0])) == 1  # --measure.figure_every_n_epochs 10 (default): after the last epoch


def test_print_config_shows_every_section_without_training(tmp_path):
    result = _train("--print_config", "--model.optimizer", "sam", "--model.rho", "0.1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    assert config["model"]["optimizer"] == "sam"
    assert config["model"]["rho"] == 0.1
    assert {"trainer", "data", "measure", "seed_everything", "ckpt_path"} <= set(config)
    assert not (tmp_path / "runs").exists()


def test_unknown_optimizer_flag_is_rejected_with_the_choices(tmp_path):
    result = _train("--model.optimizer", "adam", cwd=tmp_path)
    assert result.returncode != 0
    assert "model.optimizer" in result.stderr
    assert "lsam" in result.stderr


def test_toy_config_runs_through_train_py(tmp_path, monkeypatch, capsys):

    argv = ["train.py", f"--config={ROOT / 'configs' / 'toy.yaml'}", "--trainer.fast_dev_run=true"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    assert "Finished after" in capsys.readouterr().out


@pytest.fixture
def printed_config(capsys, monkeypatch):
    """``python train.py *args --print_config``, in this process (fast), as a dict."""

    def print_config(*args: str) -> dict:
        monkeypatch.setattr(sys, "argv", ["train.py", *args, "--print_config"])
        with pytest.raises(SystemExit) as exit_:  # --print_config exits after printing
            TRAIN["main"]()
        assert exit_.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)

    return print_config


def test_print_config_shows_configs_toy_yaml_as_the_defaults(printed_config):
    config = printed_config()
    toy = yaml.safe_load((ROOT / "configs" / "toy.yaml").read_text())
    assert config["model"]["rho"] == toy["model"]["rho"] == 0.2
    assert config["data"]["class_path"] == toy["data"]["class_path"]
    assert toy["data"]["init_args"].items() <= config["data"]["init_args"].items()
    assert toy["trainer"].items() <= config["trainer"].items()
    assert "DEFAULTS" not in TRAIN  # one source of defaults: the YAML


def test_a_config_replaces_the_toy_defaults_as_a_whole(printed_config):
    config = printed_config("--config", str(ROOT / "configs" / "cifar_mnist.yaml"))
    assert config["data"]["class_path"] == "lightning_sam.datamodules.CifarMnistDataModule"
    assert not {"turns", "n_train"} & set(config["data"]["init_args"])
    assert config["model"]["body"]["class_path"] == "lightning_sam.bodies.SmallCNN"
    assert "hidden" not in config["model"]["body"]["init_args"]
    assert config["model"]["rho"] == 0.05
    assert config["trainer"]["log_every_n_steps"] is None

    trainer = printed_config(f"--config={ROOT / 'configs' / 'pacs.yaml'}")["trainer"]
    assert trainer["max_steps"] == 5000
    assert trainer["max_epochs"] is None  # not the toy's 60


def test_summary_without_a_logger_still_names_the_checkpoint(tmp_path):
    no_measurements = ["--measure.probe", "false", "--measure.importance", "false", "--measure.scaling", "false"]
    result = _train("--trainer.max_epochs=1", "--trainer.logger=false", *SMALL_TOY, *no_measurements, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Finished after 1 epochs" in result.stdout
    checkpoint = next(line for line in result.stdout.splitlines() if line.startswith("Checkpoint:"))
    assert Path(tmp_path, checkpoint.split()[-1]).is_file()
    assert "tensorboard" not in result.stdout
    assert "Logs:" not in result.stdout


def _finished_trainer(metrics: dict[str, float], loggers=(), checkpoint=None) -> SimpleNamespace:
    return SimpleNamespace(
        current_epoch=3,
        global_step=30,
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        loggers=list(loggers),
        checkpoint_callback=checkpoint,
        interrupted=False,
    )


MECHANISM = {
    "scaling/log_relative_gain": 0.25,
    "scaling/flip_rate": 0.0,
    "importance/gini_within_class_real": 0.4,
    "importance/gini_within_class_phantom": 0.3,
    "train/rho_relative_epoch": 0.05,  # logged on step and epoch
}


def test_run_summary_shows_the_mechanism_and_what_it_means():
    summary = TRAIN["run_summary"](_finished_trainer({"val/acc": 0.9, "importance/gini_real": 0.5, **MECHANISM}))
    lines = summary.splitlines()
    assert lines[0] == "Finished after 3 epochs, 30 steps."
    mechanism = lines[lines.index("Mechanism:") + 1 :]
    for key in TRAIN["MECHANISM_KEYS"]:
        assert sum(line.split()[0] == key for line in mechanism if line.split()) == 1, key
    assert "train/rho_relative  " in summary
    assert "0.0500" in summary
    assert sum("importance/gini_within_class_real" in line for line in lines) == 1  # not also among the finals
    assert sum("log relative gain > 0" in line for line in lines) == 1
    assert "rho is too large" in summary


def test_run_summary_without_mechanism_metrics_prints_the_rest():
    summary = TRAIN["run_summary"](_finished_trainer({"val/acc": 0.9, "probe/hard/acc": 0.7}))
    assert "Mechanism" not in summary
    assert "log relative gain" not in summary
    assert "val/acc" in summary
    assert "probe/hard/acc" in summary
    assert "Checkpoint" not in summary
    assert "Logs" not in summary


def test_run_summary_points_tensorboard_at_its_logs_and_csv_at_its_file(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    checkpoint.best_model_path = str(tmp_path / "epoch=2.ckpt")
    tensorboard, csv = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")

    summary = TRAIN["run_summary"](_finished_trainer({}, [tensorboard], checkpoint))
    assert f"Checkpoint:  {tmp_path / 'epoch=2.ckpt'}" in summary
    assert f"tensorboard --logdir {tmp_path / 'tb'}" in summary

    summary = TRAIN["run_summary"](_finished_trainer({}, [csv], checkpoint))
    assert "tensorboard" not in summary
    assert f"CSV:         {Path(csv.log_dir) / 'metrics.csv'}" in summary


def test_measurement_callbacks_follow_what_the_datamodule_provides():
    measure = TRAIN["Measurements"]()
    names = [type(c).__name__ for c in TRAIN["measurement_callbacks"](measure, ToyDataModule())]
    assert names == ["FeatureProbe", "ImportanceWeights", "LearningRateScaling", "GroupAccuracy"]
    names = [type(c).__name__ for c in TRAIN["measurement_callbacks"](measure, pl.LightningDataModule())]
    assert names == ["ImportanceWeights"]


def test_learning_rate_scaling_is_attached_only_where_feature_directions_exist():
    def names(model, **flags):
        measure = TRAIN["Measurements"](**flags)
        return [type(c).__name__ for c in TRAIN["measurement_callbacks"](measure, ToyDataModule(), model)]

    toy = SAMClassifier(TwoBranchMLP(hidden=4))  # declares feature_blocks
    plain = SAMClassifier(SmallCNN(input_shape=(3, 8, 8)))  # no blocks: the probes give the directions
    assert "LearningRateScaling" in names(toy, probe=False)
    assert "LearningRateScaling" in names(plain)
    assert "LearningRateScaling" not in names(plain, probe=False)


def test_measurements_reject_a_negative_interval():
    with pytest.raises(ValueError, match=r"measure\.every_n_epochs"):
        TRAIN["Measurements"](every_n_epochs=-1)


# --- run folders, checkpoints and resuming ------------------------------------------------------------------

RUNS = Path("runs", "lightning_logs")


@pytest.fixture
def train_here(tmp_path, monkeypatch, capsys):
    """``python train.py *QUICK *args`` in this process, in ``tmp_path``: its exit code and what it printed."""
    monkeypatch.chdir(tmp_path)

    def train(*args: str) -> tuple[object, str]:
        return run_in_process(monkeypatch, capsys, *QUICK, *args)

    return train


@pytest.fixture
def record_fit(monkeypatch):
    """``record_fit()`` replaces ``Trainer.fit`` with a recorder of the model's state and the checkpoint to resume."""

    def record() -> list[dict]:
        calls: list[dict] = []

        def fit(trainer, model, datamodule=None, ckpt_path=None, weights_only=None):
            calls.append({"ckpt_path": ckpt_path, "state": {k: v.clone() for k, v in model.state_dict().items()}})

        monkeypatch.setattr(pl.Trainer, "fit", fit)
        return calls

    return record


def test_a_run_racing_another_for_version_0_takes_a_folder_of_its_own(train_here, monkeypatch, tmp_path):
    # both runs listed the logs folder before either created version_0: Lightning would hand both the same version
    monkeypatch.setattr(TensorBoardLogger, "_get_next_version", lambda self: 0)
    assert train_here("--model.optimizer=sgd")[0] == 0
    assert train_here("--model.optimizer=sam")[0] == 0
    first, second = tmp_path / RUNS / "version_0", tmp_path / RUNS / "version_1"
    assert yaml.safe_load((first / "config.yaml").read_text())["model"]["optimizer"] == "sgd"
    assert yaml.safe_load((second / "config.yaml").read_text())["model"]["optimizer"] == "sam"
    assert yaml.safe_load((first / "hparams.yaml").read_text())["optimizer"] == "sgd"
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["optimizer"] == "sgd"
    assert len(list(first.glob("events.out.tfevents.*"))) == 1


def test_runs_claiming_folders_at_once_each_get_their_own(tmp_path):
    claim, barrier = TRAIN["claim_run_folder"], threading.Barrier(8)

    def claim_after_all_are_ready(_: int) -> Path:
        barrier.wait()
        return claim(tmp_path / "logs").path

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(claim_after_all_are_ready, range(8)))
    assert sorted(p.name for p in folders) == [f"version_{n}" for n in range(8)]


def test_a_run_keeps_epoch_checkpoints_and_last_next_to_an_on_exception_checkpoint(train_here, tmp_path):
    code, printed = train_here("--trainer.callbacks+=OnExceptionCheckpoint", "--trainer.callbacks.dirpath=on_exception")
    assert code == 0, printed[-3000:]
    folder = tmp_path / RUNS / "version_0" / "checkpoints"
    assert {p.name for p in folder.iterdir()} == {"epoch=0-step=1.ckpt", "last.ckpt"}
    # one checkpoint written per epoch: last.ckpt links to it
    assert (folder / "last.ckpt").is_symlink()
    assert (folder / "last.ckpt").resolve() == (folder / "epoch=0-step=1.ckpt").resolve()


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume_it(train_here, tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    try:
        code, printed = train_here("--trainer.max_epochs=5", "--trainer.callbacks+=tests.tiny.CtrlC",
                                   "--trainer.callbacks.step=3")  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C from its graceful shutdown on
    assert code == 1  # Lightning's exit status after a graceful shutdown
    assert "Interrupted during epoch 3 (counted from 0), after 3 steps." in printed
    last = tmp_path.resolve() / RUNS / "version_0" / "checkpoints" / "last.ckpt"
    assert f"Checkpoint:  {last}" in printed
    assert torch.load(last, weights_only=True)["global_step"] == 3  # the end of epoch 2, the last one finished
    assert f"Resume:      python train.py --ckpt_path {last}, with this run's other flags" in printed
    assert "Finished after" not in printed


def test_ctrl_c_without_checkpointing_says_there_is_no_checkpoint(train_here):
    handler = signal.getsignal(signal.SIGINT)
    try:
        code, printed = train_here("--trainer.max_epochs=5", "--trainer.callbacks+=tests.tiny.CtrlC",
                                   "--trainer.callbacks.step=3", "--trainer.enable_checkpointing=false")  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, handler)
    assert code == 1
    assert "Checkpoint:  none (checkpointing is off)" in printed
    assert "Resume:" not in printed


def test_ckpt_path_last_refuses_a_link_to_a_deleted_checkpoint(train_here, tmp_path):
    assert train_here()[0] == 0  # version_0, an older run that must not be resumed in its place
    assert train_here()[0] == 0  # version_1
    checkpoints = tmp_path / RUNS / "version_1" / "checkpoints"
    (checkpoints / "last.ckpt").resolve().unlink()  # killed between saving and linking, or pruned by hand
    code, printed = train_here("--ckpt_path=last")
    assert code == 2
    error = printed[printed.rindex("error:") :]
    assert str(RUNS / "version_1" / "checkpoints" / "last.ckpt") in error  # the run's, not version_0's
    assert "is gone" in error


def test_a_configured_model_checkpoint_replaces_the_default_one(train_here, tmp_path):
    code, printed = train_here("--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath=mine")
    assert code == 0, printed[-3000:]
    assert list((tmp_path / "mine").glob("*.ckpt"))
    assert not (tmp_path / RUNS / "version_0" / "checkpoints").exists()


def test_a_resume_with_the_same_settings_continues_the_run_in_a_new_folder(train_here, tmp_path):
    assert train_here("--model.lr_schedule=constant")[0] == 0
    code, printed = train_here("--model.lr_schedule=constant", "--trainer.max_epochs=2", "--ckpt_path=last")
    assert code == 0, printed[-3000:]
    assert "Finished after 2 epochs, 2 steps." in printed
    resumed = torch.load(tmp_path / RUNS / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2
    assert (tmp_path / RUNS / "version_1" / "config.yaml").is_file()


def test_a_resume_may_evaluate_in_other_batches(train_here):
    # how many examples evaluation reads at once changes no training: like num_workers, a resume may change it
    assert train_here("--model.lr_schedule=constant")[0] == 0
    code, printed = train_here("--model.lr_schedule=constant", "--trainer.max_epochs=2", "--ckpt_path=last",
                               "--data.init_args.evaluation_batch_size=0")  # fmt: skip
    assert code == 0, printed[-3000:]
    assert "Finished after 2 epochs, 2 steps." in printed


def test_ckpt_path_last_hands_fit_the_latest_runs_file(train_here, record_fit, tmp_path):
    assert train_here()[0] == 0
    assert train_here()[0] == 0  # version_1
    fit_arguments = record_fit()
    assert train_here("--ckpt_path=last")[0] == 0
    resumed = Path(fit_arguments[-1]["ckpt_path"]).resolve()
    assert resumed == (tmp_path / RUNS / "version_1" / "checkpoints" / "last.ckpt").resolve()


def test_weights_from_starts_a_new_run_from_the_checkpoints_weights(train_here, record_fit, tmp_path):
    assert train_here("--trainer.max_epochs=2", "--model.optimizer=sgd")[0] == 0
    checkpoint = tmp_path / RUNS / "version_0" / "checkpoints" / "last.ckpt"
    weights = torch.load(checkpoint, weights_only=True)["state_dict"]
    fit_arguments = record_fit()

    code, printed = train_here("--weights_from", str(checkpoint), "--model.lr=0.5", "--model.lr_schedule=constant")
    assert code == 0, printed[-3000:]
    assert fit_arguments[-1]["ckpt_path"] is None  # a new run: new optimizer, schedule and histories
    for key, value in weights.items():
        assert torch.equal(fit_arguments[-1]["state"][key], value), key
