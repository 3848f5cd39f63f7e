"""Record what goes INTO a layer (its first argument), and find a model's classifier.

The pooled features a classifier reads are the input of its last linear layer; not every
model has a module whose output is exactly that tensor (``x.flatten(1)`` often runs in
``forward``), so the input itself is recorded with a forward pre-hook that is always removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from convlens.errors import LayerError
from convlens.layers.capture import Capture
from convlens.layers.find import LayerSpec, named_layers, resolve_layer


def classifier_layer(model: nn.Module) -> str:
    """Name of the model's last ``nn.Linear`` (in ``named_modules`` order): its classifier.
    `LayerError` naming the fix when there is none."""
    linears = [name for name, module in named_layers(model) if isinstance(module, nn.Linear)]
    if not linears:
        raise LayerError(
            "the model has no nn.Linear classifier whose input could be taken as its pooled "
            "features; pass layer=... (a layer whose output is pooled instead)"
        )
    return linears[-1]


@contextmanager
def capture_inputs(model: nn.Module, layer: LayerSpec) -> Iterator[Capture]:
    """Record a detached copy of the first positional input of ``layer`` at every call in
    the block (``Capture.activation(name)`` reads it); the hook is removed on exit."""
    name, module = resolve_layer(model, layer)
    result = Capture(names=[name], calls={name: []})

    def hook(_module, inputs):
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            raise LayerError(f"layer {name!r} takes no tensor input; choose another layer")
        result.calls[name].append(inputs[0].detach().clone())

    handle = module.register_forward_pre_hook(hook)
    try:
        yield result
    finally:
        handle.remove()
