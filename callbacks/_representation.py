"""Where the callbacks read the representation ``Φ(x)``: by default, the input of the model's final ``nn.Linear``.

"Final" means the layer that produces the model's output, found on one training batch when training starts
(:func:`detect_head`); before that, the last ``nn.Linear`` in ``model.modules()`` order, which is the head for
torchvision classifiers (``fc``, ``classifier``'s last layer) and for ``SAMClassifier`` (``head``). The input is
captured with a forward pre-hook while ``model(x)`` runs, so any model whose forward returns logits works unchanged.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_sam.callbacks._evaluation_mode import evaluation_mode

RepresentationSpec = str | Callable[[nn.Module, Tensor], Tensor] | None
"""``None``: the final ``nn.Linear``'s input; a module name: that module's input; a function ``f(model, x)``."""


# model -> the name of the nn.Linear found to produce its output (see detect_head)
_DETECTED: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def detect_head(model: nn.Module, x: Tensor) -> tuple[str, nn.Linear]:
    """The ``nn.Linear`` whose output ``model(x)`` returns, found by running the model once; remembered per model.

    Runs in eval mode without gradients, so no parameter, buffer, mode or gradient changes. The last registered
    ``nn.Linear`` is not always the one that produces the logits (a model may define its head first, or end in an
    auxiliary layer); measuring the wrong layer would be silently wrong.

    Example:
        >>> class HeadFirst(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.head, self.body = nn.Linear(4, 2), nn.Linear(3, 4)
        ...
        ...     def forward(self, x):
        ...         return self.head(self.body(x))
        >>> detect_head(HeadFirst(), torch.zeros(2, 3))[0]
        'head'
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear head: pass the representation as a module name or a "
            "function f(model, x) -> (B, D)"
        )
    outputs: dict[str, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _args, out, name=n: outputs.__setitem__(name, out))
        for n, m in linears.items()
    ]
    try:
        with evaluation_mode(model), torch.no_grad():
            result = model(x)
    finally:
        for handle in handles:
            handle.remove()
    for name, out in outputs.items():
        if out is result or (
            isinstance(result, Tensor) and out.shape == result.shape and bool(torch.equal(out, result))
        ):
            _DETECTED[model] = name
            return name, linears[name]
    raise ValueError(
        f"the output of {type(model).__name__} is not the output of any of its nn.Linear layers "
        f"({', '.join(linears)}), so the callbacks cannot tell which layer is the head: pass head=<module name> "
        "(and representation=<module name or function> to FeatureProbe / TransferProbe)."
    )


def head_detected(model: nn.Module) -> bool:
    """Whether :func:`detect_head` has already found this model's head."""
    return model in _DETECTED


def final_linear(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """The head: the module called ``name``, else the one :func:`detect_head` found, else the last ``nn.Linear``."""
    if name is None and model in _DETECTED:
        name = _DETECTED[model]
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
    module: nn.Module | None
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
