"""Models whose output is not one tensor: a dict, a tuple, a named tuple or a
``ModelOutput``-like object (a dataclass, or a mapping such as Hugging Face's
``ModelOutput``). Every method explains one tensor of it, picked by `select_output`.

Which tensor: the one named by an output key (`output_key`: ``explain(...,
output_key="logits")``, ``convlens explain --output-key logits``; an int picks a tuple
position), else the only tensor the output holds, else its entry named ``logits``. Any
other structure is ambiguous and raises `TargetError` naming ``--output-key``. A plain
tensor is used as it is (a key given for it is not needed and not checked). The key is
set for a block with `output_key` (a context variable, so each thread has its own) and
read where convlens borrows the model
(`convlens.layers.borrow.borrowed_model`), so every forward pass of every method sees the
same tensor.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from convlens.detections import is_detections
from convlens.errors import TargetError

OutputKey = str | int | None

_KEY: contextvars.ContextVar[OutputKey] = contextvars.ContextVar(
    "convlens_output_key", default=None
)


@contextmanager
def output_key(key: OutputKey) -> Iterator[None]:
    """For the block, models' outputs are read at ``key`` (None: auto-detect, see module
    docstring). Digits (``"0"``, as the CLI passes them) name a tuple position."""
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key)
    token = _KEY.set(key)
    try:
        yield
    finally:
        _KEY.reset(token)


def current_output_key() -> OutputKey:
    """The key `output_key` set for this block (None outside one)."""
    return _KEY.get()


def output_entries(output: object) -> dict[str | int, object] | None:
    """The named entries of a structured output: a mapping's items, a dataclass's fields, a
    named tuple's fields, a tuple's or list's positions; None for anything else."""
    if isinstance(output, Mapping):
        return dict(output.items())
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return dict(zip(output._fields, output, strict=True))
    if isinstance(output, (tuple, list)):
        return dict(enumerate(output))
    return None


def select_output(output: object, key: OutputKey = None) -> object:
    """The tensor of ``output`` a method explains (see the module docstring): ``output``
    itself when it is a tensor, else its entry ``key``, its only tensor, or its ``logits``.
    Outputs that are neither tensors nor structures, and a detector's list of detections
    (`convlens.detections.is_detections`), are handed back as they are."""
    if isinstance(output, torch.Tensor) or is_detections(output):
        return output  # a tensor: also the second of nested borrows, already picked
    entries = output_entries(output)
    if entries is None:
        return output
    if key is not None:
        if key not in entries:
            available = ", ".join(repr(k) for k in entries)
            raise TargetError(
                f"the model output has no entry {key!r}; --output-key / output_key= takes one "
                f"of: {available}"
            )
        chosen = entries[key]
        if not isinstance(chosen, torch.Tensor):
            raise TargetError(
                f"output entry {key!r} is a {type(chosen).__name__}, not a tensor; name a "
                "tensor entry with --output-key / output_key="
            )
        return chosen
    tensors = {k: v for k, v in entries.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if isinstance(tensors.get("logits"), torch.Tensor):
        return tensors["logits"]
    names = ", ".join(repr(k) for k in tensors) or "none"
    raise TargetError(
        f"the model returns a {type(output).__name__} with {len(tensors)} tensors ({names}) "
        "and none is named 'logits'; say which one to explain with --output-key NAME "
        "(output_key='NAME' in Python)"
    )


def selected_output_hook(_module: torch.nn.Module, _args: tuple, output: object) -> object:
    """Forward hook: the module's output replaced by `select_output` under the current key."""
    return select_output(output, current_output_key())
