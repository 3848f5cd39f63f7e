"""Stop a long computation on a model between two forward passes.

Slow methods (occlusion, Score-CAM, SmoothGrad, Integrated Gradients) run the model once per
chunk of perturbed copies. `stop_between_passes` borrows the model for a block with a
forward pre-hook that asks ``should_stop()`` before each pass and raises `Interrupted` when
it answers true; the method's own ``finally`` blocks then give the model back (eval flags,
hooks, rules), and the hook itself is removed on exit. A web request that is cancelled thus
stops at the next chunk and frees what the method held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from convlens.errors import ConvlensError


class Interrupted(ConvlensError):
    """A computation was stopped on request (`stop_between_passes`)."""


@contextmanager
def stop_between_passes(model: nn.Module, should_stop: Callable[[], bool]) -> Iterator[nn.Module]:
    """For the block, every call of ``model`` first checks ``should_stop()`` and raises
    `Interrupted` when it is true (also before the first pass). The hook is removed on exit,
    also after an exception. TorchScript modules take no hooks: they run to the end."""
    if isinstance(model, torch.jit.ScriptModule):
        yield model
        return

    def check(_module: nn.Module, _args: tuple) -> None:
        if should_stop():
            raise Interrupted("stopped on request before the next forward pass")

    handle = model.register_forward_pre_hook(check)
    try:
        yield model
    finally:
        handle.remove()
