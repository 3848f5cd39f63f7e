"""Run a model only as far as the layers a computation reads.

A scan of early layers, or the projection of an early unit, needs nothing after the last
layer it reads; `run_until` stops the forward pass as soon as each requested layer has
produced its output (its first call), with hooks that are removed on return.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from convlens.layers.find import resolve_layer


class _Reached(BaseException):
    """Raised from a hook to leave the forward pass (a BaseException, so a model's own
    ``except Exception`` cannot swallow it)."""


def run_until(model: nn.Module, layers: Sequence[str], *inputs) -> None:
    """Call ``model(*inputs)`` and stop once every one of ``layers`` has returned an output;
    forward hooks registered earlier on those layers (a `capture`) run first. The model's
    own output is not returned."""
    pending = {resolve_layer(model, layer)[0] for layer in layers}
    modules = dict(model.named_modules())

    def reached(name: str):
        def hook(_module, _inputs, _output):
            pending.discard(name)
            if not pending:
                raise _Reached

        return hook

    handles = [modules[name].register_forward_hook(reached(name)) for name in sorted(pending)]
    try:
        model(*inputs)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
