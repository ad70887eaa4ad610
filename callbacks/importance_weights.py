"""How evenly SGD and SAM weight the training examples: importance weights, their Gini and Lorenz curves.

METHOD.md section 4 (the paper's Figure 3). At the end of every ``every_n_epochs``-th training epoch, for a fixed
seeded set of training examples, batch by batch: the real weights ``λ_i = 1 − softmax(z_i)[y_i]`` and the phantom
weights ``λ̃_i``, the same at ``θ̃ = θ + ρ g / ‖g‖`` with ``g`` the batch's loss gradient over the head (``scope="head"``,
LSAM) or all parameters (``"all"``, SAM). Logged: ``importance/gini_real`` and ``importance/gini_phantom`` (synced
over processes), and a Lorenz-curve figure ``importance/lorenz`` (both curves and the diagonal) to TensorBoard,
drawn on rank zero. Under SAM the phantom curve lies closer to the diagonal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor
from torch.utils.data import Dataset
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override

from lightning_sam.callbacks.batch_fields import batch_input, batch_target
from lightning_sam.callbacks.evaluation_mode import evaluation_mode
from lightning_sam.callbacks.fixed_subset import fixed_subset_loader
from lightning_sam.callbacks.perturbation import perturbed_parameter_names, resolve_perturbation
from lightning_sam.functional.importance import importance_weights, phantom_point
from lightning_sam.functional.inequality import lorenz_curve
from lightning_sam.metrics.gini_coefficient import GiniCoefficient


class ImportanceWeights(Callback):
    """Logs the Gini coefficient and Lorenz curve of real and phantom importance weights on fixed examples.

    The weights are computed with the model in eval mode (no dropout, BatchNorm running statistics), through
    ``torch.autograd.grad`` and ``torch.func.functional_call``: parameters, gradients, buffers and train/eval modes
    are left exactly as found, and the global RNG is not used.

    Attributes:
        history: one dict per measurement: ``epoch``, ``step`` and the two Gini coefficients.

    Args:
        rho: perturbation radius of the phantom point; default: the model's ``rho`` (``SAMClassifier``).
        scope: ``"head"`` (LSAM) or ``"all"`` (SAM) parameters perturbed; default: the model's
            ``perturbation_scope``, else ``"all"``.
        num_examples: size of the fixed set of training examples.
        batch_size: examples per phantom point (the perturbation is per batch, as in training); default: the
            training loader's batch size.
        every_n_epochs: measure after every n-th training epoch.
        lorenz_figure: log the Lorenz figure to TensorBoard: ``True`` requires a ``TensorBoardLogger``, ``None``
            (default) draws it whenever one is attached, ``False`` never.
        head: name of the head module; default: the model's final ``nn.Linear``.
        batch_input: reads the model input from a batch (default ``batch[0]``).
        batch_target: reads the ``(B,)`` labels from a batch (default ``batch[1]``).
        dataset: the training examples to draw from; default: the datamodule's ``train_dataset`` or the
            training loader's dataset.
        seed: chooses the fixed examples.
    """

    def __init__(
        self,
        rho: float | None = None,
        scope: Literal["head", "all"] | None = None,
        num_examples: int = 1024,
        batch_size: int | None = None,
        every_n_epochs: int = 1,
        lorenz_figure: bool | None = None,
        head: str | None = None,
        batch_input: Callable[[Any], Tensor] = batch_input,
        batch_target: Callable[[Any], Tensor] = batch_target,
        dataset: Dataset | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if rho is not None and not rho >= 0:
            raise ValueError(f"rho must be >= 0 or None (the model's own), got {rho}")
        if scope not in (None, "head", "all"):
            raise ValueError(f"scope must be 'head', 'all' or None (the model's own), got {scope!r}")
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.rho, self.scope = rho, scope
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.lorenz_figure = lorenz_figure
        self.head = head
        self.batch_input, self.batch_target = batch_input, batch_target
        self.dataset = dataset
        self.seed = seed
        self.history: list[dict[str, float]] = []
        self.gini_real, self.gini_phantom = GiniCoefficient(), GiniCoefficient()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # measures training only
        if self.lorenz_figure is True and self._tensorboard(trainer) is None:
            raise ValueError(
                "ImportanceWeights(lorenz_figure=True) draws the Lorenz curves into TensorBoard, but the Trainer has "
                "no TensorBoardLogger: pass Trainer(logger=TensorBoardLogger(...)) (or add one to its loggers), or "
                "ImportanceWeights(lorenz_figure=False) to log only the Gini coefficients."
            )
        resolve_perturbation(pl_module, self.rho, self.scope, "ImportanceWeights")  # fail now, not after an epoch
        self.gini_real.to(pl_module.device)
        self.gini_phantom.to(pl_module.device)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            for key, value in self.measure(trainer, pl_module).items():
                pl_module.log(key, value, sync_dist=True, reduce_fx="max")  # equal on all ranks: max keeps it exact

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Computes both Gini coefficients (and draws the Lorenz figure); returns and records the values."""
        rho, scope = resolve_perturbation(pl_module, self.rho, self.scope, "ImportanceWeights")
        names = perturbed_parameter_names(pl_module, scope, self.head)
        loader = fixed_subset_loader(trainer, self.num_examples, self.batch_size, self.seed, self.dataset)
        self.gini_real.to(pl_module.device)
        self.gini_phantom.to(pl_module.device)
        with evaluation_mode(pl_module):
            for batch in loader:
                batch = move_data_to_device(batch, pl_module.device)
                y = self.batch_target(batch)
                point = phantom_point(pl_module, self.batch_input(batch), y, rho, names)
                self.gini_real.update(importance_weights(point.real_logits, y))
                self.gini_phantom.update(importance_weights(point.phantom_logits, y))
        metrics = {
            "importance/gini_real": self.gini_real.compute().item(),  # synced over ranks
            "importance/gini_phantom": self.gini_phantom.compute().item(),
        }
        if self.lorenz_figure is True or (self.lorenz_figure is None and self._tensorboard(trainer) is not None):
            self._log_lorenz(trainer, metrics["importance/gini_real"], metrics["importance/gini_phantom"])
        self.gini_real.reset()
        self.gini_phantom.reset()
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})
        return metrics

    def _log_lorenz(self, trainer: pl.Trainer, gini_real: float, gini_phantom: float) -> None:
        curves = []
        for metric in (self.gini_real, self.gini_phantom):
            with metric.sync_context():  # every rank's weights (a collective: all ranks enter it)
                curves.append(lorenz_curve(dim_zero_cat(metric.weights)))
        tensorboard = self._tensorboard(trainer)
        if not trainer.is_global_zero or tensorboard is None:
            return
        figure = Figure(figsize=(4.5, 4.5))
        ax = figure.add_subplot()
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="equal weights")
        for (x, y), label, gini in zip(curves, ("real λ", "phantom λ̃"), (gini_real, gini_phantom), strict=True):
            ax.plot(x.cpu().numpy(), y.cpu().numpy(), label=f"{label} (Gini {gini:.3f})")
        ax.set(xlabel="fraction of examples (ascending weight)", ylabel="fraction of total weight", xlim=(0, 1))
        ax.set(ylim=(0, 1), title=f"importance weights, epoch {trainer.current_epoch}")
        ax.legend(loc="upper left")
        tensorboard.experiment.add_figure("importance/lorenz", figure, global_step=trainer.global_step, close=False)

    @staticmethod
    def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict["history"]]
