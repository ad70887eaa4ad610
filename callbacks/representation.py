"""Where the callbacks read the representation ``Φ(x)``: by default, the input of the model's final ``nn.Linear``.

"Final" means last in ``model.modules()`` order, which is the head for torchvision classifiers (``fc``,
``classifier``'s last layer) and for ``SAMClassifier`` (``head``, registered last). The input is captured with a
forward pre-hook while ``model(x)`` runs, so any model whose forward returns logits works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

RepresentationSpec = str | Callable[[nn.Module, Tensor], Tensor] | None
"""``None``: the final ``nn.Linear``'s input; a module name: that module's input; a function ``f(model, x)``."""


def final_linear(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """The head: the module called ``name``, or the last ``nn.Linear`` of ``model``, with its name."""
    if name is not None:
        module = dict(model.named_modules()).get(name)
        if not isinstance(module, nn.Linear):
            found = "no such module" if module is None else type(module).__name__
            raise ValueError(f"head {name!r} must name an nn.Linear of {type(model).__name__}, got {found}")
        return name, module
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear head: pass the representation as a module name or a "
            "function f(model, x) -> (B, D)"
        )
    return linears[-1]


def representation(model: nn.Module, x: Tensor, spec: RepresentationSpec = None) -> Tensor:
    """``(B, D)`` representation of the input batch ``x`` (flattened after the batch dimension)."""
    if callable(spec):
        return spec(model, x).flatten(1)
    if spec is None:
        _, module = final_linear(model)
    else:
        module = dict(model.named_modules()).get(spec)
        if module is None:
            raise ValueError(f"representation {spec!r} names no module of {type(model).__name__}")
    captured: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"module {spec or 'the final nn.Linear'} was not called by {type(model).__name__}.forward")
    return captured[-1].flatten(1)
