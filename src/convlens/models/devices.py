"""Where a model runs: device names, the model's device and dtype, inputs that follow it.

One resolver (`resolve_device`) turns ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``,
``"auto"`` or a ``torch.device`` into a device this machine has, or raises `DeviceError`
naming the fix. ``"auto"`` is CUDA when present, else MPS (Apple GPU), else the CPU.

Two ways to use a device, with different promises:
- ``load_model(..., device=...)`` moves the model there for good (``nn.Module.to``, in
  place, also for a module you pass in): that is what you asked for.
- ``device=`` on a call that borrows a model (``explain``, feature maps, visualisation,
  evaluation) runs that call there and moves the model back where it was afterwards
  (also after an exception), so the call leaves your model where it found it. Moving
  costs a copy of the weights each way: for many calls, load the model on the device once.

Inputs follow the model (`model_input`: its device and its floating dtype, a copy only
when one is needed, never an in-place change); results meant for drawing come back on the
CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from convlens.errors import DeviceError
from convlens.maps import full_precision

DEVICE_CHOICES = "cpu, cuda, cuda:N, mps or auto"
DeviceSpec = str | torch.device


def resolve_device(device: DeviceSpec) -> torch.device:
    """The ``torch.device`` named by ``device`` (one of `DEVICE_CHOICES` or a
    ``torch.device``), checked to exist on this machine; `DeviceError` otherwise.

    ``"cuda"`` means the current CUDA device (``cuda:0`` unless changed), and under
    ``torchrun`` with several workers this process's own GPU, ``cuda:LOCAL_RANK``;
    ``"cuda:N"`` is device N as written; ``"auto"`` CUDA, else MPS, else the CPU."""
    text = str(device).strip().lower()
    if text == "auto":
        return _auto_device()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise DeviceError(f"unknown device {str(device)!r}; use {DEVICE_CHOICES}") from error
    if parsed.type == "cpu":
        return torch.device("cpu")
    if parsed.type == "cuda":
        return _cuda_device(parsed.index)
    if parsed.type == "mps":
        if not _mps_available():
            raise DeviceError(
                "MPS (the Apple GPU) is not available on this machine; use --device cpu "
                "(device='cpu')"
            )
        return torch.device("mps")
    raise DeviceError(f"device {str(device)!r} is not supported; use {DEVICE_CHOICES}")


def _auto_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _cuda_device(index: int | None) -> torch.device:
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU found"
        raise DeviceError(
            f"CUDA is not available on this machine ({why}); use --device cpu (device='cpu') "
            "or auto"
        )
    count = torch.cuda.device_count()
    if index is None:
        index = _torchrun_local_rank()
    if index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if index >= count:
        raise DeviceError(
            f"there is no CUDA device {index}: this machine has {count} "
            f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})"
        )
    return torch.device("cuda", index)


def _torchrun_local_rank() -> int | None:
    """``LOCAL_RANK`` when ``torchrun`` started this process among several workers."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return None


def _model_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def model_devices(model: nn.Module) -> set[torch.device]:
    """Every device that holds a parameter or buffer of ``model`` (empty when it has none)."""
    return {tensor.device for tensor in _model_tensors(model)}


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU when it has none."""
    first = next(_model_tensors(model), None)
    return torch.device("cpu") if first is None else first.device


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s first floating-point parameter (or buffer), None if none."""
    return next((t.dtype for t in _model_tensors(model) if t.is_floating_point()), None)


def model_input(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` on ``model``'s device and, when floating point, in its floating dtype
    (``images`` itself when nothing changes; otherwise a copy: the caller's tensor is never
    modified). A model without parameters or buffers takes ``images`` as they are."""
    first = next(_model_tensors(model), None)
    if first is None:
        return images
    dtype = model_dtype(model) if images.is_floating_point() else None
    return images.to(device=first.device, dtype=dtype)


def cpu_fast_format(images: torch.Tensor) -> torch.memory_format:
    """The memory layout a batch shaped like ``images`` runs fastest in: channels-last for a
    ``Tensor[B, C, H, W]`` on the CPU (there oneDNN runs every convolution of a network such
    as EfficientNet-Lite0, its depthwise and 1x1 layers included, where a contiguous batch
    sends many of them to slower reference kernels); contiguous for anything else."""
    if images.device.type == "cpu" and images.dim() == 4:
        return torch.channels_last
    return torch.contiguous_format


# The most pixels a forward pass takes on the CPU where convlens builds the batch itself
# (eight images of 224 x 224): per image, passes of a few images cost less there than
# passes of many (cache, fresh allocations; docs/performance.md, "Passes of eight images").
CPU_PASS_PIXELS = 8 * 224 * 224


def cpu_pass_rows(images: torch.Tensor) -> int:
    """Rows of ``images`` ``Tensor[N, C, H, W]`` per forward pass on the CPU: as many as
    fit in `CPU_PASS_PIXELS`, at least one; all of them off the CPU or for a batch that is
    not ``[N, C, H, W]``."""
    if images.device.type != "cpu" or images.dim() != 4:
        return len(images)
    return max(1, CPU_PASS_PIXELS // max(1, images.shape[-2] * images.shape[-1]))


def cpu_passes(images: torch.Tensor, most: int | None = None) -> list[slice]:
    """The row slices of ``images`` ``Tensor[N, C, H, W]``, in order, that run as separate
    forward passes: at most ``most`` (default `cpu_pass_rows`; given, ``images`` may be any
    tensor, only its length is read) rows each, as even as possible (9 rows at 224 px:
    5 + 4, not 8 + 1). Even passes matter: on the CPU a row
    computed alone can differ in the last bit from the same row in a batch, which would
    break the exact zeros of a perturbation method whose clean pass and copies are split
    alike, and a one-row pass reaches models that squeeze their output."""
    count = len(images)
    most = cpu_pass_rows(images) if most is None else most
    passes = max(1, -(-count // max(1, most)))
    size = -(-count // passes) if count else 0
    return [slice(start, min(start + size, count)) for start in range(0, count, max(size, 1))]


def cpu_fast_layout(images: torch.Tensor) -> torch.Tensor:
    """A CPU batch ``Tensor[B, C, H, W]`` in channels-last layout (`cpu_fast_format`; the
    same values and shape, no copy when it already is); anything else unchanged."""
    layout = cpu_fast_format(images)
    return images if layout == torch.contiguous_format else images.contiguous(memory_format=layout)


@contextmanager
def placed_on(model: nn.Module, device: DeviceSpec | None) -> Iterator[torch.device]:
    """Run the block with ``model`` on ``device`` (resolved by `resolve_device`), then move
    it back to the device it was on (also after an exception); yields the device the model
    is on in the block. ``None``, or the device it is already on, changes nothing. A model
    spread over several devices is not moved: `DeviceError` (move it yourself, or leave
    ``device`` unset)."""
    if device is None:
        yield model_device(model)
        return
    target = resolve_device(device)
    homes = model_devices(model)
    if len(homes) > 1:
        names = ", ".join(sorted(str(d) for d in homes))
        raise DeviceError(
            f"the model is spread over several devices ({names}); convlens runs it where it "
            "is: leave device unset, or move it yourself"
        )
    if not homes or homes == {target}:
        yield target
        return
    (home,) = homes
    model.to(target)
    try:
        yield target
    finally:
        model.to(home)


def to_cpu(value):
    """``value`` for drawing and saving: a tensor detached on the CPU, half and bfloat16
    widened to float32 (numpy has no bfloat16); anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    return full_precision(value.detach().cpu())
