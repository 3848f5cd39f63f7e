"""Borrow a model for the length of a block: eval mode and private input copies, both
given back on exit (also after an exception)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def borrowed_model(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Put every module in eval mode for the duration, then restore each module's own
    ``training`` flag (also after an exception). Nothing else about the model changes.

    For the duration, every call of ``model`` gets private copies of its tensor arguments,
    positional and keyword alike (a forward pre-hook, removed on exit), so a model that
    edits an input in place (``x.sub_(mean)``) changes neither the caller's tensor nor the
    tensor a method reuses for its next forward pass. The copy is differentiable: input
    gradients still reach the caller's leaf. (Not for TorchScript modules, which cannot be hooked.)
    """
    flags = [(module, module.training) for module in model.modules()]
    # TorchScript modules take no hooks; they run on the tensor as given.
    scripted = isinstance(model, torch.jit.ScriptModule)
    handle = (
        None if scripted else model.register_forward_pre_hook(_private_inputs, with_kwargs=True)
    )
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        if handle is not None:
            handle.remove()
        for module, training in flags:
            module.training = training


def _private_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return tuple(_private(a) for a in args), {k: _private(v) for k, v in kwargs.items()}


def _private(value: object) -> object:
    return value.clone() if isinstance(value, torch.Tensor) else value
