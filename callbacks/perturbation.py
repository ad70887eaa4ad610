"""Which phantom point the measuring callbacks build: ``ρ``, the scope, and the perturbed parameters' names.

Defaults come from the model when it declares them (``SAMClassifier.rho`` and ``.perturbation_scope`` reflect its
own optimizer: ``ρ = 0`` for SGD, scope ``"head"`` for LSAM); explicit callback arguments win.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from lightning_sam.callbacks.protocols import SharpnessAware
from lightning_sam.callbacks.representation import final_linear

Scope = Literal["head", "all"]


def resolve_perturbation(
    model: nn.Module, rho: float | None, scope: Scope | None, callback: str
) -> tuple[float, Scope]:
    """``(ρ, scope)``: the given values, else the model's own, else (scope only) ``"all"``."""
    declared = isinstance(model, SharpnessAware)
    if rho is None:
        if not declared:
            raise ValueError(
                f"{callback} needs the perturbation radius: pass {callback}(rho=0.05) (or the value you train with); "
                f"{type(model).__name__} declares no `rho`."
            )
        rho = float(model.rho)
    if scope is None:
        scope = model.perturbation_scope if declared else "all"
    return rho, scope


def perturbed_parameter_names(model: nn.Module, scope: Scope, head: str | None = None) -> list[str]:
    """Names of the parameters the phantom point moves: the head's, or every trainable one."""
    if scope == "head":
        name, module = final_linear(model, head)
        return [f"{name}.{p}" for p, param in module.named_parameters() if param.requires_grad]
    return [n for n, p in model.named_parameters() if p.requires_grad]
