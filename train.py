"""Train a classifier with SGD, SAM, ASAM or LSAM and watch the mechanism in TensorBoard.

    python train.py                                    # LSAM on the toy, ~1-2 min on a laptop CPU
    python train.py --model.optimizer sgd              # the baseline
    python train.py --config configs/waterbirds.yaml --data.root /path/to/data
    python train.py --print_config                     # every flag, as YAML

Every constructor argument of the model (``--model.*``), the datamodule (``--data.*``) and the Trainer
(``--trainer.*``) is a flag; ``--measure.*`` switches the measurement callbacks; ``--ckpt_path`` resumes.
"""

from __future__ import annotations

from pytorch_lightning import LightningDataModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightning_sam import SAMClassifier
from lightning_sam.measurements import Measurements, measurement_callbacks
from lightning_sam.run_summary import run_summary

DEFAULTS = {
    "model.body": {"class_path": "lightning_sam.bodies.TwoBranchMLP"},
    "model.optimizer": "lsam",
    "model.rho": 2.0,
    "data": {"class_path": "lightning_sam.datamodules.ToyDataModule"},
    "trainer.max_epochs": 60,
    "trainer.default_root_dir": "runs",
    "trainer.log_every_n_steps": 10,
}


class TrainCLI(LightningCLI):
    """LightningCLI without subcommands: parse, build, fit, summarise."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_class_arguments(Measurements, "measure")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume from")
        parser.set_defaults(DEFAULTS)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        configured = self.config_init.get("trainer.callbacks") or []
        extra = measurement_callbacks(self.config_init["measure"], self.datamodule)
        return super().instantiate_trainer(callbacks=[*configured, *extra], **kwargs)


def main() -> None:
    cli = TrainCLI(
        SAMClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        run=False,
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config["ckpt_path"], weights_only=True)
    if cli.trainer.is_global_zero:
        print(run_summary(cli.trainer))


if __name__ == "__main__":
    main()
