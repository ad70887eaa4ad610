"""Train a classifier with SGD, SAM, ASAM or LSAM and watch the mechanism in TensorBoard.

    python train.py                                    # configs/toy.yaml: LSAM on the toy, ~1-2 min on a laptop CPU
    python train.py --model.optimizer sgd              # the baseline
    python train.py --config configs/waterbirds.yaml --data.root /path/to/data
    python train.py --print_config                     # every flag, as YAML

Every constructor argument of the model (``--model.*``), the datamodule (``--data.*``) and the Trainer
(``--trainer.*``) is a flag; ``--measure.*`` switches the measurement callbacks; ``--ckpt_path`` resumes a run
(``last``: the latest run's ``last.ckpt``) and ``--weights_from`` starts a new run from a checkpoint's weights.
With no ``--config`` the defaults are ``configs/toy.yaml``; a ``--config`` replaces them as a whole.

Each run owns its folder ``<default_root_dir>/lightning_logs/version_N``, created atomically: its ``config.yaml``,
logs and ``checkpoints/`` (``last.ckpt`` among them). A run that fails before its first step removes it again.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import torch
from jsonargparse import ActionYesNo, Namespace
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning import Callback, LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn
from typing_extensions import override

from lightning_sam import SAMClassifier
from lightning_sam.callbacks import FeatureProbe, GroupAccuracy, ImportanceWeights, LearningRateScaling
from lightning_sam.datamodules.image_feature_dataset import UnreadableImageError

SHARDED_METADATA = "meta.pt"  # Lightning's name for a sharded checkpoint's non-tensor part
RESUME_ENV = "LIGHTNING_SAM_RESUME"  # the checkpoint `--ckpt_path last` resolved to, for DDP's child processes
REPO = Path(__file__).resolve().parent
TOY_CONFIG = REPO / "configs" / "toy.yaml"

SUMMARY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/worst_group_acc")
SUMMARY_PREFIXES = ("probe/", "importance/gini", "scaling/ratio", "transfer/")
MECHANISM_KEYS = (
    "scaling/log_relative_gain",
    "scaling/flip_rate",
    "importance/gini_within_class_real",
    "importance/gini_within_class_phantom",
    "train/rho_relative",
)
MECHANISM_NOTE = (
    "  log relative gain > 0: the phantom head speeds the hard feature relative to the easy one; within-class "
    "phantom Gini < real: the phantom re-balances examples; flips should be ~0 (if not, rho is too large)."
)


@dataclass
class Measurements:
    """The ``--measure.*`` flags.

    Args:
        probe: per-feature linear probes (``probe/<feature>/acc``), on datamodules with probe splits.
        importance: Gini coefficients and Lorenz curves of real and phantom importance weights.
        scaling: the learning-rate scaling ratios ``v_hard/v_easy`` and ``ṽ_hard/ṽ_easy`` (feature directions from
            the body's ``feature_blocks``, else from the probes).
        groups: per-group and worst-group accuracy, on datamodules with groups.
        every_n_epochs: how often the epoch-end measurements run (``0``: only after the last epoch).
        figure_every_n_epochs: how often the Lorenz figure is drawn into TensorBoard, at a measurement (and after the
            last epoch; ``0``: only then). One render costs about 60 ms: on the toy, as much as 4 training epochs.
    """

    probe: bool = True
    importance: bool = True
    scaling: bool = True
    groups: bool = True
    every_n_epochs: int = 1
    figure_every_n_epochs: int = 10

    def __post_init__(self) -> None:
        for name in ("every_n_epochs", "figure_every_n_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"measure.{name} must be >= 0 (0: only after the last epoch), got {getattr(self, name)}"
                )


def measurement_callbacks(
    measure: Measurements, datamodule: pl.LightningDataModule, model: nn.Module | None = None
) -> list[Callback]:
    """The callbacks that ``measure`` asks for and ``datamodule`` (and ``model``) can feed.

    The learning-rate scaling needs feature directions: the body's declared ``feature_blocks`` or the probes.
    """
    n = measure.every_n_epochs
    features = tuple(getattr(datamodule, "feature_names", ()))
    probing = measure.probe and bool(features) and hasattr(datamodule, "probe_dataloaders")
    blocks = isinstance(getattr(getattr(model, "body", None), "feature_blocks", None), dict)
    callbacks: list[Callback] = []
    if probing:
        callbacks.append(FeatureProbe(every_n_epochs=n))
    if measure.importance:
        callbacks.append(ImportanceWeights(every_n_epochs=n, figure_every_n_epochs=measure.figure_every_n_epochs))
    if measure.scaling and len(features) >= 2 and (probing or blocks):
        callbacks.append(LearningRateScaling(every_n_epochs=n))
    if measure.groups and getattr(datamodule, "num_groups", 0) > 0:
        callbacks.append(GroupAccuracy())
    return callbacks


def run_summary(trainer: pl.Trainer) -> str:
    """A short human summary of a finished or interrupted ``fit``: metrics, the mechanism, the logs and checkpoint."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    shown = [k for k in SUMMARY_KEYS if k in metrics]
    shown += sorted(
        k for k in metrics if k.startswith(SUMMARY_PREFIXES) and not k.endswith("/error") and k not in MECHANISM_KEYS
    )
    # a step-and-epoch metric reaches callback_metrics as `key_epoch` (and possibly `key`)
    mechanism = {k: metrics.get(k, metrics.get(f"{k}_epoch")) for k in MECHANISM_KEYS}
    mechanism = {k: v for k, v in mechanism.items() if v is not None}

    steps = f"{trainer.global_step} steps"
    if trainer.interrupted:
        lines = [f"Interrupted during epoch {trainer.current_epoch} (counted from 0), after {steps}."]
    else:
        lines = [f"Finished after {trainer.current_epoch} epochs, {steps}."]
    lines += [f"  {k:<28} {metrics[k]:.4f}" for k in shown]
    if mechanism:
        lines.append("Mechanism:")
        lines += [f"  {k:<36} {v:.4f}" for k, v in mechanism.items()]
        lines.append(MECHANISM_NOTE)
    checkpoint = trainer.checkpoint_callback
    checkpoint_path = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
    if checkpoint_path:
        lines.append(f"Checkpoint:  {checkpoint_path}")
        if trainer.interrupted:  # the path itself: `last` could name another run's file (a ModelCheckpoint elsewhere)
            lines.append(f"Resume:      python train.py --ckpt_path {checkpoint_path}, with this run's other flags")
    elif trainer.interrupted:
        written = "none yet (the first is written when an epoch ends)" if checkpoint else "none (checkpointing is off)"
        lines.append(f"Checkpoint:  {written}")
    for logger in trainer.loggers:
        if logger.log_dir is None:
            continue
        lines.append(f"Logs:        {logger.log_dir}")
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"TensorBoard: tensorboard --logdir {logger.root_dir}")
        elif isinstance(logger, CSVLogger):
            lines.append(f"CSV:         {logger.experiment.metrics_file_path}")
    return "\n".join(lines)


class UsageError(Exception):
    """A bad input: ``main`` reports it as ``train.py: error: <message>`` with exit status 2, without a traceback."""


# --- the run folder: each run owns one, created atomically ---------------------------------------------------


@dataclass
class RunFolder:
    """A claimed ``<root>/version_N`` and the empty parents its claim created (removed with it by :meth:`release`)."""

    path: Path
    version: int | str
    created_from: Path | None

    def release(self) -> None:
        """Remove the folder (it is this run's: nobody else writes into it) and the parents the claim created."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self.created_from is None:
            return
        folder = Path(os.path.abspath(self.path)).parent
        while True:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                return
            if folder == self.created_from:
                return
            folder = folder.parent


def claim_run_folder(root: Path, version: int | str | None = None) -> RunFolder:
    """Create ``root/version_N`` for the next ``N`` (or exactly ``version``).

    ``os.mkdir`` fails when another run took that name first: two runs started at once get two folders, never one.
    """
    absolute = Path(os.path.abspath(root))
    missing = [folder for folder in (absolute, *absolute.parents) if not folder.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        if version is not None:
            name = version if isinstance(version, str) else f"version_{version}"
            (root / name).mkdir()
            return RunFolder(root / name, version, missing[-1] if missing else None)
        number = 1 + max((int(m[1]) for d in os.listdir(root) if (m := re.fullmatch(r"version_(\d+)", d))), default=-1)
        while True:
            try:
                (root / f"version_{number}").mkdir()
                return RunFolder(root / f"version_{number}", number, missing[-1] if missing else None)
            except FileExistsError:
                number += 1  # another run claimed it since we listed the folder
    except FileExistsError as error:
        if version is not None and root.is_dir():
            raise UsageError(
                f"the run folder {error.filename} exists: a run never writes into another run's folder. Give the "
                "logger another version, or none to take the next free one"
            ) from error
        raise UsageError(f"cannot create run folders in {root}: {error.filename} is a file") from error
    except OSError as error:
        raise UsageError(
            f"cannot create a run folder in {root} ({error.strerror or error}): choose a writable "
            "--trainer.default_root_dir (or logger save_dir)"
        ) from error


def latest_last_checkpoint(logs_root: Path) -> Path:
    """What ``--ckpt_path last`` resumes: ``checkpoints/last.ckpt`` of the highest ``version_N`` that has one.

    Runs stopped before their first checkpoint (or resumes of a finished run) leave folders without one; they are
    passed over.
    """
    runs = sorted(
        (int(m[1]), logs_root / m[0])
        for m in (re.fullmatch(r"version_(\d+)", d) for d in (os.listdir(logs_root) if logs_root.is_dir() else ()))
        if m
    )
    if not runs:
        raise UsageError(f"--ckpt_path last: there is no run folder (version_N) in {logs_root} to resume")
    for _, folder in reversed(runs):
        last = folder / "checkpoints" / "last.ckpt"
        if last.is_symlink() and not last.exists():  # passing over it would resume an older run without a word
            raise UsageError(
                f"--ckpt_path last: {last} links to {os.readlink(last)}, which is gone (a run killed between saving "
                "a checkpoint and linking it, or a deleted file): pass the checkpoint to resume as --ckpt_path <file>"
            )
        if last.is_file() or is_sharded_checkpoint(last):
            return last.resolve()
    raise UsageError(
        f"--ckpt_path last: no run folder in {logs_root} ({', '.join(f.name for _, f in runs)}) has "
        "checkpoints/last.ckpt; pass the checkpoint to resume as --ckpt_path <file>"
    )


# --- checkpoints ---------------------------------------------------------------------------------------------


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a sharded checkpoint: ``ModelParallelStrategy``'s folder of shards and ``meta.pt``."""
    return path.is_dir() and (path / SHARDED_METADATA).is_file()


def read_checkpoint(path: str, flag: str) -> Any:
    """``torch.load(path, weights_only=True)``, or a :class:`UsageError` that says what the file is instead."""
    file = Path(path)
    if not file.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if is_sharded_checkpoint(file):
        if flag != "--ckpt_path":
            raise UsageError(
                f"{flag} {path} is a sharded checkpoint (a folder of shards): resume it with --ckpt_path, or make "
                "one file of it first (python -m torch.distributed.checkpoint.format_utils dcp_to_torch "
                f"{path} weights.ckpt)"
            )
        return read_checkpoint(str(file / SHARDED_METADATA), flag)  # the loops and hyperparameters; weights aside
    if file.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a checkpoint file, e.g. a run's checkpoints/last.ckpt")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        with open(file, "rb") as handle:
            head = handle.read(512)
        if head and b"\0" not in head:
            raise UsageError(
                f"{flag} {path} is a text file (a config?), not a checkpoint: a config goes to --config, a .ckpt file "
                f"to {flag}"
            ) from error
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"{flag} {path} is not a readable checkpoint (truncated or corrupt? {reason}); use another one, e.g. an "
            "earlier epoch's"
        ) from error


def check_training_checkpoint(path: str) -> None:
    """Refuse, before anything is written, a ``--ckpt_path`` that cannot resume a run."""
    checkpoint = read_checkpoint(path, "--ckpt_path")
    # a sharded checkpoint keeps the weights and optimizer state in its shards, the rest in its metadata file
    required = {"loops"} if is_sharded_checkpoint(Path(path)) else {"state_dict", "optimizer_states", "loops"}
    if not isinstance(checkpoint, dict) or not required <= checkpoint.keys():
        raise UsageError(
            f"--ckpt_path {path} holds weights only (no optimizer, schedule or loop state), so there is no run to "
            f"resume: start a new run from these weights with --weights_from {path}"
        )


def load_weights(model: nn.Module, path: str) -> None:
    """``--weights_from``: the parameters and buffers of a checkpoint (or bare ``state_dict``), nothing else."""
    checkpoint = read_checkpoint(path, "--weights_from")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights_from {path} holds no state_dict (a dict of tensors)")
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        details = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", reshaped))
            if keys
        )
        raise UsageError(f"--weights_from {path}: its weights do not fit this model ({details})")
    model.load_state_dict(state)


class RunRecord(Callback):
    """Keeps the body and data configuration in the checkpoint and refuses to resume a run of other ones.

    Resuming continues the optimizer, the schedule and the callbacks' histories; on other data or another body they
    would mix two runs. (SAMClassifier checks its own hyperparameters.)
    """

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = json.loads(json.dumps(record, sort_keys=True, default=str))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"record": json.dumps(self.record, sort_keys=True)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        changed = config_differences(json.loads(state_dict["record"]), self.record)
        if changed:
            raise ValueError(
                "cannot resume from this checkpoint: its run used another body or data (" + "; ".join(changed) + "). "
                "Resuming continues the checkpoint's optimizer, schedule and measurement histories, so resume with "
                "its values, or start a new run from its weights with --weights_from <checkpoint>"
            )


def run_record(config: Any) -> dict[str, Any]:
    """What a resume must keep: the body and the data.

    Not where the data lies, nor how many workers read it or how many examples evaluation reads at once.
    """
    data = config["data"].as_dict() if hasattr(config["data"], "as_dict") else dict(config["data"] or {})
    for key in ("root", "num_workers", "evaluation_batch_size"):
        data.get("init_args", {}).pop(key, None)
    body = config["model"]["body"]
    return {"model.body": body.as_dict() if hasattr(body, "as_dict") else body, "data": data}


def config_differences(theirs: Any, ours: Any, key: str = "") -> list[str]:
    """``"key: <theirs> in the checkpoint, <ours> now"`` for every leaf that differs."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return [
            line
            for k in sorted(theirs.keys() | ours.keys())
            for line in config_differences(theirs.get(k), ours.get(k), f"{key}.{k}" if key else k)
        ]
    return [] if theirs == ours else [f"{key}: {theirs!r} in the checkpoint, {ours!r} now"]


# --- the CLI -------------------------------------------------------------------------------------------------

OPTIMIZER_HINT = (
    "SAMClassifier builds its own optimizer and schedule: choose them with --model.optimizer {sgd,sam,asam,lsam}, "
    "--model.rho, --model.lr, --model.momentum, --model.weight_decay and --model.lr_schedule {cosine,constant}"
)


def clearer_parse_error(message: str) -> str:
    """A parse error with its one real cause brought out, and a pointer to ``--model.*`` for optimizer flags.

    jsonargparse buries a datamodule's error under "does not validate against any of the Union subtypes", next to
    the other subtype's (always ``None``) "Expected a <class 'NoneType'>".
    """
    lines = message.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "Errors:" or not any("Union subtypes" in seen for seen in lines[:i]):
            continue
        indent = len(line) - len(line.lstrip())
        items: list[list[str]] = []
        for item_line in lines[i + 1 :]:
            depth = len(item_line) - len(item_line.lstrip())
            if depth <= indent:
                break
            if depth == indent + 2 and item_line.lstrip().startswith("- "):
                items.append([])
            if items:
                items[-1].append(item_line[indent + 4 :] if depth > indent + 2 else item_line.lstrip()[2:])
        causes = [item for item in items if item[0].strip() != "Expected a <class 'NoneType'>"]
        if len(causes) == 1:
            header = [seen for seen in lines[:i] if "Union subtypes" not in seen and "Subtypes:" not in seen]
            return clearer_parse_error("\n".join([*header, *causes[0]]))
        break
    if re.search(r"(?<![\w.])-*(optimizer|lr_scheduler)\b", message):
        message += f"\n{OPTIMIZER_HINT}"
    return message


def did_you_mean(message: str, flags: list[str]) -> str:
    """A line ``--model.rhoo: did you mean --model.rho?`` for each unrecognized flag close to one of ``flags``.

    Nothing for the others: a flag of a subclass (``--data.init_args.*``) is not among the root parser's ``flags``,
    and a subclass's own parser names its flags without their prefix.
    """
    match = re.search(r"unrecognized arguments: (.*)", message)
    if match is None:
        return ""
    hints = []
    for given in re.findall(r"(?<!\S)(--[\w.\-+]+)", match.group(1)):
        close = difflib.get_close_matches(given, flags, n=1, cutoff=0.75)
        if close:
            hints.append(f"\n  {given}: did you mean {close[0]}?")
    return "".join(hints)


class TrainParser(LightningArgumentParser):
    """The CLI's parser: clearer messages for the errors users meet most, without the page of usage before them."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        message = clearer_parse_error(message)
        debug = os.environ.get("JSONARGPARSE_DEBUG", "").lower() in ("1", "true", "yes", "on")
        if not self.exit_on_error or debug:
            super().error(message, ex)  # raised to jsonargparse itself (a Union subtype tried), or for debugging
        flags = [flag for flag in self._option_string_actions if flag.startswith("--")]
        sys.stderr.write(f"train.py: error: {message}{did_you_mean(message, flags)}\n")
        sys.stderr.write("(python train.py --help lists every flag)\n")
        self.exit(2)


def constructor_error(error: BaseException) -> str:
    """An error raised while building the model, data, loggers or Trainer, with the flag it came from."""
    root = error
    while root.__cause__ is not None and ("Union subtypes" in str(root) or "jsonargparse" in type(root).__module__):
        root = root.__cause__  # jsonargparse's wrapper of the constructor's own error
    flags = (
        (LightningModule, "--model"),
        (LightningDataModule, "--data"),
        (nn.Module, "--model.body"),
        (Logger, "--trainer.logger"),
        (Callback, "--trainer.callbacks"),
        (Trainer, "--trainer"),
    )
    for frame, _ in traceback.walk_tb(root.__traceback__):
        owner = frame.f_locals.get("self")
        flag = next((flag for cls, flag in flags if isinstance(owner, cls)), None)
        if flag is not None:
            name = type(owner).__name__
            return f"{flag}: {root}" if str(root).startswith(name) else f"{flag} ({name}): {root}"
    return str(root)


def sharding_strategy(trainer: Any) -> Namespace | None:
    """``--trainer.strategy ModelParallelStrategy`` as SAMClassifier shards: FSDP2 over all processes.

    Lightning's own default ("auto" sizes) makes every process of a node one tensor-parallel group, all reading the
    same data; SAMClassifier applies no tensor parallelism, so every process is a data-parallel one. ``None``: the
    strategy is another, or its sizes are set.
    """
    strategy = trainer.get("strategy")
    if isinstance(strategy, str):
        if strategy.rsplit(".", 1)[-1].lower() != "modelparallelstrategy":
            return None
        init_args = Namespace()
    elif isinstance(strategy, Namespace) and str(strategy.get("class_path", "")).endswith(".ModelParallelStrategy"):
        init_args = strategy.get("init_args") or Namespace()
        if (init_args.get("data_parallel_size"), init_args.get("tensor_parallel_size")) not in (
            (None, None),
            ("auto", "auto"),
        ):
            return None
    else:
        return None
    devices = trainer.get("devices")
    if isinstance(devices, str) and re.fullmatch(r"\d+", devices.strip()):
        devices = int(devices)
    elif isinstance(devices, str) and "," in devices:
        devices = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, list):
        devices = len(devices)
    if not isinstance(devices, int) or devices < 1:
        raise UsageError(
            f"--trainer.strategy ModelParallelStrategy needs the number of processes: pass --trainer.devices N (got "
            f"{devices!r})"
        )
    init_args.data_parallel_size = devices * int(trainer.get("num_nodes") or 1)
    init_args.tensor_parallel_size = 1
    return Namespace(class_path="pytorch_lightning.strategies.ModelParallelStrategy", init_args=init_args)


class TrainCLI(LightningCLI):
    """LightningCLI without subcommands: parse, build, fit, summarise; each run in a folder of its own."""

    run_folders: list[RunFolder]
    ckpt_path: str | None

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_class_arguments(Measurements, "measure")
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="checkpoint to resume from ('last': the latest run's)"
        )
        parser.add_argument(
            "--weights_from", type=str | None, default=None,
            help="start a new run from this checkpoint's (or state_dict's) weights: new optimizer, schedule, histories",
        )  # fmt: skip
        parser.add_argument(
            "--check", action=ActionYesNo, default=False,
            help="read every file of the dataset once, report all unreadable ones together, and exit without training",
        )  # fmt: skip

    @override
    def before_instantiate_classes(self) -> None:
        self.run_folders, self.ckpt_path = [], None
        if self.config["check"] and "model.body.init_args.pretrained" in self.config:
            # --check reads the data only: an offline node must not need the body's pretrained weights for it
            self.config["model.body.init_args.pretrained"] = False
        trainer = self.config["trainer"]
        if trainer.get("gradient_clip_val") is not None:
            self.parser.error(
                "--trainer.gradient_clip_val: SAMClassifier optimizes manually, so the Trainer cannot clip its "
                "gradients; use --model.gradient_clip_val instead"
            )
        if trainer.get("accumulate_grad_batches") not in (None, 1):
            self.parser.error(
                "--trainer.accumulate_grad_batches: SAMClassifier optimizes manually and takes one step per batch; "
                "use a larger --data.init_args.batch_size instead"
            )
        sharding = sharding_strategy(trainer)
        if sharding is not None:
            trainer["strategy"] = sharding
        if self.config["ckpt_path"] and self.config["weights_from"]:
            self.parser.error(
                "--ckpt_path resumes a run, --weights_from starts a new one from its weights: give one of them"
            )

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, RuntimeError, OSError, ImportError, MisconfigurationException) as error:
            raise UsageError(constructor_error(error)) from error

    @override
    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Check the checkpoint to resume or the weights to start from, claim the run folder, build the Trainer."""
        trainer = self.config_init["trainer"]
        configured = trainer.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        callbacks = [*configured, *measurement_callbacks(self.config_init["measure"], self.datamodule, self.model)]
        if self.config["weights_from"]:
            load_weights(self.model, self.config["weights_from"])

        logger = trainer.get("logger")
        if logger is None or logger is True:
            logger = TensorBoardLogger(trainer.get("default_root_dir") or os.getcwd())
        loggers = [] if logger is False else list(logger) if isinstance(logger, list) else [logger]
        folder_loggers = [each for each in loggers if isinstance(each, TensorBoardLogger | CSVLogger)]
        default_root = Path(trainer.get("default_root_dir") or os.getcwd(), "lightning_logs")
        logs_root = Path(folder_loggers[0].root_dir) if folder_loggers else default_root

        self.ckpt_path = self.config["ckpt_path"]
        stale = [c.ckpt_path for c in configured if isinstance(c, OnExceptionCheckpoint) and Path(c.ckpt_path).exists()]
        if stale and not self.ckpt_path:
            # Lightning's fit(ckpt_path=None) resumes it without a word
            raise UsageError(
                f"{stale[0]} exists: an earlier run's OnExceptionCheckpoint that a new run would resume silently. "
                f"Resume it with --ckpt_path {stale[0]}, or move it away, or give OnExceptionCheckpoint another dirpath"
            )
        if self.ckpt_path == "last":
            # resolved once, by the process the user started: the processes a DDP launch starts later inherit it
            # (resolved again, `last` could name the folder this run is about to claim)
            resolved = os.environ.get(RESUME_ENV) or str(latest_last_checkpoint(logs_root))
            os.environ[RESUME_ENV] = self.ckpt_path = resolved
        if self.ckpt_path:
            check_training_checkpoint(self.ckpt_path)
            self.config["ckpt_path"] = str(Path(self.ckpt_path).resolve())  # config.yaml names what was resumed
        if self.config["weights_from"]:
            self.config["weights_from"] = str(Path(self.config["weights_from"]).resolve())
        if trainer.get("fast_dev_run"):  # writes nothing: no run folder
            return super().instantiate_trainer(callbacks=callbacks, **kwargs)

        run_dir = None
        if rank_zero_only.rank == 0:  # processes a DDP launch starts take rank 0's folder (Lightning broadcasts it)
            self._claim(loggers, folder_loggers, default_root)
            run_dir = self.run_folders[0].path
        try:
            if run_dir is not None:
                self.parser.save(self.config, str(run_dir / "config.yaml"), skip_none=False, overwrite=False)
            if trainer.get("enable_checkpointing") is not False and not any(
                isinstance(c, ModelCheckpoint) for c in configured
            ):
                dirpath = None if run_dir is None else run_dir / "checkpoints"
                # last.ckpt links to the epoch's checkpoint: one write per epoch, not two (Lightning copies a file
                # where the file system refuses links)
                callbacks.append(ModelCheckpoint(dirpath=dirpath, save_last="link"))
            callbacks.append(RunRecord(run_record(self.config)))
            return super().instantiate_trainer(callbacks=callbacks, logger=loggers or False, **kwargs)
        except BaseException:
            self.release_run_folders()
            raise

    def _claim(self, loggers: list[Logger], folder_loggers: list[Logger], default_root: Path) -> None:
        """Claim a run folder for every TensorBoard/CSV logger (one per root) and give the logger its version."""
        claimed: dict[tuple[str, Any], RunFolder] = {}
        try:
            for each in folder_loggers:
                # the constructor's `version`, set once the folder is claimed: only then is it known
                key = (os.path.abspath(each.root_dir), each._version)
                if key not in claimed:
                    claimed[key] = claim_run_folder(Path(each.root_dir), each._version)
                each._version = claimed[key].version
            self.run_folders = list(claimed.values()) or [claim_run_folder(default_root)]
        except UsageError:
            for folder in claimed.values():
                folder.release()
            raise

    def release_run_folders(self) -> None:
        """Undo the claims of a run that failed before its first step: it leaves nothing behind."""
        for folder in self.run_folders:
            folder.release()
        self.run_folders = []


def default_config_files(argv: list[str]) -> list[str]:
    """``configs/toy.yaml`` unless ``argv`` names a ``--config``.

    A config is a whole experiment: merged over the toy, the toy's ``max_epochs`` and ``log_every_n_steps`` would
    leak into, say, a DomainBed run that sets only ``max_steps``.
    """
    named = any(arg in ("-c", "--config") or arg.startswith("--config=") for arg in argv)
    return [] if named else [str(TOY_CONFIG)]


def check_data(datamodule: LightningDataModule) -> str:
    """``--check``: download if needed, then read every file of every split once (all unreadable files in one error)."""
    datamodule.prepare_data()
    check_files = getattr(datamodule, "check_files", None)
    if check_files is None:
        return f"--check: {type(datamodule).__name__} has no check_files(); nothing was read"
    try:
        count = check_files()
    except UnreadableImageError as error:
        raise UsageError(str(error)) from error
    held = "its data is generated or cached in memory, and was read while building the splits"
    return f"--check: {type(datamodule).__name__}: " + (f"all {count} files are readable" if count else held)


def _raised_by_an_input_check(error: BaseException) -> bool:
    """Whether an error before the first step comes from checking the inputs rather than from running code.

    Such errors are raised where the inputs are read or checked: the datamodules, the callbacks, a checkpoint's
    load and the resume checks. A ``ValueError`` from a model's forward (a shape mismatch) is a bug, and keeps its
    traceback.
    """
    if isinstance(error, MisconfigurationException):
        return True
    if not isinstance(error, ValueError | OSError):
        return False
    checking = (REPO / "datamodules", REPO / "callbacks")
    checks = {"setup", "prepare_data", "on_load_checkpoint", "load_state_dict"}
    traceback_ = error.__traceback__
    while traceback_ is not None:
        code = traceback_.tb_frame.f_code
        path = Path(code.co_filename).resolve()
        if code.co_name in checks or any(path.is_relative_to(folder) for folder in checking):
            return True
        traceback_ = traceback_.tb_next
    return False


def main() -> None:
    """``python train.py``: a bad input ends with ``train.py: error: ...`` (exit status 2) and leaves no run folder."""
    try:
        _fit()
    except UsageError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        os.environ.pop(RESUME_ENV, None)


def _fit() -> None:
    cli = TrainCLI(
        SAMClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        run=False,
        save_config_callback=None,  # the run writes config.yaml into its own folder (TrainCLI.instantiate_trainer)
        auto_configure_optimizers=False,  # `--optimizer Adam` would replace SAM
        parser_class=TrainParser,
        # allow_abbrev=False: argparse would take --trainer.max_epoch for --trainer.max_epochs without a word
        parser_kwargs={"default_config_files": default_config_files(sys.argv[1:]), "allow_abbrev": False},
    )
    if cli.config["check"]:
        cli.release_run_folders()  # a check trains nothing and writes nothing
        print(check_data(cli.datamodule))
        return
    try:
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
    except SystemExit:
        # Ctrl-C: Lightning shut down gracefully and exits; say where the run stopped and how to resume it
        if cli.trainer.interrupted and cli.trainer.is_global_zero:
            print(run_summary(cli.trainer))
        raise
    except UnreadableImageError as error:
        if cli.trainer.global_step == 0:
            cli.release_run_folders()
        # the message names the file and the fix; the run's checkpoints, if any, stay
        message = str(error)
        if message.startswith("Caught "):  # re-raised from a DataLoader worker, with the worker's traceback
            message = message.strip().splitlines()[-1].split("UnreadableImageError: ", 1)[-1]
        raise UsageError(f"{message} (python train.py ... --check reads every file before training)") from error
    except Exception as error:
        if cli.trainer.global_step > 0:
            raise
        cli.release_run_folders()
        if _raised_by_an_input_check(error):  # data setup, the checkpoint, the resume and callback checks
            raise UsageError(str(error)) from error
        raise  # a bug (in a model's forward, say) keeps its traceback
    if cli.trainer.is_global_zero:
        print(run_summary(cli.trainer))


if __name__ == "__main__":
    main()
