"""How evenly SGD and SAM weight the training examples: importance weights, their Gini and Lorenz curves.

docs/method.md section 4 (the paper's Figure 3). After every ``every_n_epochs``-th training epoch, on a fixed seeded
set of training batches: the real weights ``λ_i = 1 − softmax(z_i)[y_i]`` and the phantom weights ``λ̃_i``, the same
at each batch's own phantom point (the perturbation the model trains with: SAM, ASAM or LSAM). Logged:
``importance/gini_real`` and ``importance/gini_phantom`` (one model, the same examples: the direct effect is
``gini_phantom < gini_real``), ``importance/gini_within_class_real`` and ``importance/gini_within_class_phantom``
(the Gini of each class's weights averaged by class size: a phantom that only shifts a whole class, as the head's
bias does near initialisation, does not move them), and a Lorenz figure ``importance/lorenz`` to TensorBoard
(every ``figure_every_n_epochs``-th epoch and the last: a matplotlib render costs about 60 ms, more than the
measurement itself on a small model).

Compare models only at matched training loss, never at the same step: the Gini of ``σ(−margin)`` grows with the
margin scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_sam.callbacks._batch_fields import batch_input, batch_target
from lightning_sam.callbacks._measurement import (
    MeasuringCallback,
    check_every_n_epochs,
    is_last_epoch,
    log_measurement,
    measurement_due,
    tensorboard,
)
from lightning_sam.callbacks._phantom import (
    PerturbationOverride,
    PhantomSampling,
    check_head,
    gather_rows,
    phantom_batches,
)
from lightning_sam.functional.importance import importance_weights
from lightning_sam.functional.inequality import gini_coefficient, lorenz_curve, within_class_gini


class ImportanceWeights(MeasuringCallback):
    """Logs the Gini coefficients and Lorenz curves of real and phantom importance weights on fixed examples.

    Attributes:
        history: one dict per measurement: ``epoch``, ``step`` and the logged values.

    Args:
        rho: perturbation radius of the phantom point; default: the model's (``SAMClassifier.perturbation_spec``).
        scope: ``"head"`` (LSAM) or ``"all"`` (SAM, ASAM); default: the model's, else ``"all"``.
        adaptive: ASAM's perturbation; default: the model's, else ``False``.
        eta: ASAM's ``η``; default: the model's.
        head_bias: with ``scope="head"``, perturb the head's bias too; default: the model's, else ``False``.
        num_examples: size of the fixed set of training examples.
        batch_size: examples per phantom point; default: the training loader's batch size.
        every_n_epochs: measure after every n-th training epoch; ``0``: only after the last.
        lorenz_figure: log the Lorenz figure to TensorBoard: ``True`` requires a ``TensorBoardLogger``, ``None``
            (default) draws it whenever one is attached, ``False`` never.
        figure_every_n_epochs: draw the Lorenz figure at the measurements after every n-th epoch, and after the
            last; ``0``: only after the last. The Gini coefficients are logged at every measurement.
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
        adaptive: bool | None = None,
        eta: float | None = None,
        head_bias: bool | None = None,
        num_examples: int = 1024,
        batch_size: int | None = None,
        every_n_epochs: int = 1,
        lorenz_figure: bool | None = None,
        figure_every_n_epochs: int = 1,
        head: str | None = None,
        batch_input: Callable[[Any], Tensor] = batch_input,
        batch_target: Callable[[Any], Tensor] = batch_target,
        dataset: Dataset | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.perturbation = PerturbationOverride(rho, scope, adaptive, eta, head_bias)
        self.sampling = PhantomSampling(num_examples, batch_size, seed)
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.lorenz_figure = lorenz_figure
        if not isinstance(figure_every_n_epochs, int) or figure_every_n_epochs < 0:
            raise ValueError(
                "figure_every_n_epochs must be an int >= 0 (0: only after the last epoch), "
                f"got {figure_every_n_epochs!r}"
            )
        self.figure_every_n_epochs = figure_every_n_epochs
        self.head = head
        self.batch_input, self.batch_target = batch_input, batch_target
        self.dataset = dataset

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # measures training only
        if self.lorenz_figure is True and tensorboard(trainer) is None:
            raise ValueError(
                "ImportanceWeights(lorenz_figure=True) draws the Lorenz curves into TensorBoard, but the Trainer has "
                "no TensorBoardLogger: pass Trainer(logger=TensorBoardLogger(...)) (or add one to its loggers), or "
                "ImportanceWeights(lorenz_figure=False) to log only the Gini coefficients."
            )
        self.perturbation.resolve(pl_module, "ImportanceWeights", trainer)  # fail now, not after an epoch

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_head(trainer, pl_module, self.head, self.batch_input, self.dataset)  # fail now, not after an epoch

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if measurement_due(trainer, self.every_n_epochs):
            log_measurement(pl_module, self.measure(trainer, pl_module))

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Computes the four Gini coefficients (and draws the Lorenz figure); returns and records the values."""
        spec = self.perturbation.resolve(pl_module, "ImportanceWeights", trainer)
        batches = phantom_batches(
            trainer, pl_module, spec, self.sampling, self.head, self.batch_input, self.batch_target, self.dataset
        )
        # (N, 3) per example: λ, λ̃, label; every rank gathers all of them, in the one-process order
        rows = [
            torch.stack([importance_weights(b.real_logits, b.y), importance_weights(b.phantom_logits, b.y), b.y], 1)
            for b in batches
        ]
        local = torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.float64, device=pl_module.device)
        positions = torch.cat([b.positions for b in batches]) if batches else local.new_zeros(0, dtype=torch.long)
        real, phantom, y = gather_rows(trainer, positions, local).unbind(1)
        y = y.long()
        metrics = {
            "importance/gini_real": gini_coefficient(real).item(),
            "importance/gini_phantom": gini_coefficient(phantom).item(),
            "importance/gini_within_class_real": within_class_gini(real, y).item(),
            "importance/gini_within_class_phantom": within_class_gini(phantom, y).item(),
        }
        logger = tensorboard(trainer)
        if trainer.is_global_zero and logger is not None and self._figure_due(trainer):
            figure = _lorenz_figure(real, phantom, y, metrics, trainer.current_epoch)
            logger.experiment.add_figure("importance/lorenz", figure, global_step=trainer.global_step, close=False)
        self.record(trainer, metrics)
        return metrics

    def _figure_due(self, trainer: pl.Trainer) -> bool:
        if self.lorenz_figure is False:
            return False
        return measurement_due(trainer, self.figure_every_n_epochs) or is_last_epoch(trainer)


def _lorenz_figure(real: Tensor, phantom: Tensor, y: Tensor, gini: dict[str, float], epoch: int) -> Figure:
    """Both overall Lorenz curves and the within-class phantom one (each class's weights over their class mean)."""
    class_mean = torch.zeros(int(y.max()) + 1, dtype=phantom.dtype, device=phantom.device)
    class_mean = class_mean.scatter_reduce(0, y, phantom, reduce="mean", include_self=False)
    within = phantom / class_mean[y].clamp_min(torch.finfo(phantom.dtype).tiny)
    figure = Figure(figsize=(4.5, 4.5))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="equal weights")
    curves = (
        (real, f"real λ (Gini {gini['importance/gini_real']:.3f})", "-"),
        (phantom, f"phantom λ̃ (Gini {gini['importance/gini_phantom']:.3f})", "-"),
        (within, f"phantom λ̃ / class mean (Gini {gini_coefficient(within).item():.3f})", "--"),
    )
    for weights, label, style in curves:
        x, curve = lorenz_curve(weights)
        ax.plot(x.cpu().numpy(), curve.cpu().numpy(), linestyle=style, label=label)
    ax.set(xlabel="fraction of examples (ascending weight)", ylabel="fraction of total weight", xlim=(0, 1))
    ax.set(ylim=(0, 1), title=f"importance weights, epoch {epoch}")
    ax.legend(loc="upper left", fontsize="small")
    return figure
