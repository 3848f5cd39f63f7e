"""DeepLIFT's rescale rule (Shrikumar et al. 2017) on element-wise nonlinearities.

For a nonlinearity ``y = f(x)`` evaluated at the input ``x`` and at the reference ``x'``,
the rescale rule replaces the backward pass ``g * f'(x)`` by ``g * m`` with the multiplier

    m = (f(x) - f(x')) / (x - x')      where |x - x'| > EPS,   else m = f'(x).

Every linear step keeps its gradient, so the input "gradient" ``d`` times ``x - x'``
sums to ``S(x) - S(x')`` for the explained score ``S`` (summation-to-delta).

Nonlinearities are the element-wise activation functions ``relu`` (torch, Tensor, F and the
in-place forms), ``relu6``, ``hardtanh``, ``silu``, ``hardswish``, ``hardsigmoid``,
``gelu``, ``sigmoid``, ``tanh``, ``elu`` and ``leaky_relu``, however they are called (the
modules ``nn.ReLU``, ``nn.ReLU6``, ``nn.SiLU``, ``nn.GELU``, ... call these functions).
Max pooling and products (gates) keep their gradient.

The pairing of ``x`` with ``x'`` is by call order, not by module: `recorded_references`
runs the reference batch and records the input of each nonlinearity call, in order;
`rescale_rule` then runs the explained batch and pairs its ``k``-th call with the ``k``-th
recorded input. A module used twice is therefore two calls with two references. Both blocks
work like `convlens.layers.rules.backward_rule`: a ``TorchFunctionMode`` routes the calls
through custom autograd functions, the user's modules are never replaced or edited, and
the mode is popped on exit. The forward values are exactly the usual ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens.errors import MethodError
from convlens.layers.borrow import refuse_scripted
from convlens.models.loading import LoadedModel, as_module

EPS = 1e-6
_aten = torch.ops.aten


def _given(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict) -> dict:
    return defaults | dict(zip(names, args[1:], strict=False)) | kwargs


def _unary(fn: Callable) -> Callable[[tuple, dict], tuple]:
    def parse(args: tuple, kwargs: dict) -> tuple:
        inplace = bool(_given(args, kwargs, ("inplace",), {"inplace": False})["inplace"])
        return args[0], fn, inplace, ()

    return parse


def _hardtanh_args(args: tuple, kwargs: dict) -> tuple:
    given = _given(args, kwargs, ("min_val", "max_val", "inplace"), {})
    low, high = float(given.get("min_val", -1.0)), float(given.get("max_val", 1.0))
    return args[0], lambda t: F.hardtanh(t, low, high), bool(given.get("inplace")), (low, high)


def _relu6_args(args: tuple, kwargs: dict) -> tuple:
    inplace = bool(_given(args, kwargs, ("inplace",), {}).get("inplace", False))
    return args[0], lambda t: F.hardtanh(t, 0.0, 6.0), inplace, (0.0, 6.0)


def _gelu_args(args: tuple, kwargs: dict) -> tuple:
    approximate = _given(args, kwargs, ("approximate",), {}).get("approximate", "none")
    return args[0], lambda t: F.gelu(t, approximate=approximate), False, (approximate,)


def _elu_args(args: tuple, kwargs: dict) -> tuple:
    given = _given(args, kwargs, ("alpha", "inplace"), {})
    alpha = float(given.get("alpha", 1.0))
    return args[0], lambda t: F.elu(t, alpha), bool(given.get("inplace")), (alpha,)


def _leaky_args(args: tuple, kwargs: dict) -> tuple:
    given = _given(args, kwargs, ("negative_slope", "inplace"), {})
    slope = float(given.get("negative_slope", 0.01))
    return args[0], lambda t: F.leaky_relu(t, slope), bool(given.get("inplace")), (slope,)


def _in_place(parse: Callable[[tuple, dict], tuple]) -> Callable[[tuple, dict], tuple]:
    def parse_in_place(args: tuple, kwargs: dict) -> tuple:
        x, fn, _, settings = parse(args, kwargs)
        return x, fn, True, settings

    return parse_in_place


def _ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x)


# f'(x) from (x, f(x), settings), through the native backward kernels.
def _d_relu(x, y, _):  # noqa: ANN001
    return _aten.threshold_backward(_ones(x), y, 0)


def _d_hardtanh(x, y, settings):  # noqa: ANN001
    return _aten.hardtanh_backward(_ones(x), x, *settings)


def _d_silu(x, y, _):  # noqa: ANN001
    return _aten.silu_backward(_ones(x), x)


def _d_hardswish(x, y, _):  # noqa: ANN001
    return _aten.hardswish_backward(_ones(x), x)


def _d_hardsigmoid(x, y, _):  # noqa: ANN001
    return _aten.hardsigmoid_backward(_ones(x), x)


def _d_gelu(x, y, settings):  # noqa: ANN001
    return _aten.gelu_backward(_ones(x), x, approximate=settings[0])


def _d_sigmoid(x, y, _):  # noqa: ANN001
    return _aten.sigmoid_backward(_ones(x), y)


def _d_tanh(x, y, _):  # noqa: ANN001
    return _aten.tanh_backward(_ones(x), y)


def _d_elu(x, y, settings):  # noqa: ANN001
    return _aten.elu_backward(_ones(x), settings[0], 1.0, 1.0, False, x)


def _d_leaky(x, y, settings):  # noqa: ANN001
    return _aten.leaky_relu_backward(_ones(x), x, settings[0], False)


# Each activation entry point -> (argument parser giving (x, f, inplace, settings), f'(x)
# from (x, f(x), settings) through the native backward kernels).
_RELU = (_unary(torch.relu), _d_relu)
_ACTIVATIONS: dict[Callable, tuple] = {
    F.relu: _RELU,
    torch.relu: _RELU,
    torch.Tensor.relu: _RELU,
    torch.relu_: (_in_place(_unary(torch.relu)), _d_relu),
    torch.Tensor.relu_: (_in_place(_unary(torch.relu)), _d_relu),
    F.relu6: (_relu6_args, _d_hardtanh),
    F.hardtanh: (_hardtanh_args, _d_hardtanh),
    torch._C._nn.hardtanh_: (_in_place(_hardtanh_args), _d_hardtanh),
    F.silu: (_unary(F.silu), _d_silu),
    F.hardswish: (_unary(F.hardswish), _d_hardswish),
    F.hardsigmoid: (_unary(F.hardsigmoid), _d_hardsigmoid),
    F.gelu: (_gelu_args, _d_gelu),
    torch.sigmoid: (_unary(torch.sigmoid), _d_sigmoid),
    torch.Tensor.sigmoid: (_unary(torch.sigmoid), _d_sigmoid),
    F.sigmoid: (_unary(torch.sigmoid), _d_sigmoid),
    torch.tanh: (_unary(torch.tanh), _d_tanh),
    torch.Tensor.tanh: (_unary(torch.tanh), _d_tanh),
    F.tanh: (_unary(torch.tanh), _d_tanh),
    F.elu: (_elu_args, _d_elu),
    F.leaky_relu: (_leaky_args, _d_leaky),
}


class _Rescaled(torch.autograd.Function):
    """``f(x)`` forward (in place when the call was); backward ``g * m`` with the rescale
    multiplier ``m`` computed in the forward pass (one saved tensor per call)."""

    @staticmethod
    def forward(ctx, x, reference, fn, derivative, settings, inplace):  # noqa: ANN001
        out = fn(x)
        delta_in = x - reference
        multiplier = (out - fn(reference)).div_(delta_in)
        near = delta_in.abs_() <= EPS
        if bool(near.any()):  # rare: f'(x) is computed only when some element needs it
            multiplier = torch.where(near, derivative(x, out, settings), multiplier)
        ctx.save_for_backward(multiplier)
        if inplace:
            x.copy_(out)
            ctx.mark_dirty(x)
            return x
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (multiplier,) = ctx.saved_tensors
        return grad * multiplier, None, None, None, None, None


@dataclass
class References:
    """The input of each nonlinearity call of a reference batch, in call order."""

    inputs: list[torch.Tensor] = field(default_factory=list)


class _RecordMode(TorchFunctionMode):
    def __init__(self, references: References) -> None:
        super().__init__()
        self.references = references

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _ACTIVATIONS and _is_float(args[0]):
            self.references.inputs.append(args[0].detach().clone())
        return func(*args, **kwargs)


class _RescaleMode(TorchFunctionMode):
    def __init__(self, references: References) -> None:
        super().__init__()
        self.references = references
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        entry = _ACTIVATIONS.get(func)
        if entry is None or not _is_float(args[0]):
            return func(*args, **kwargs)
        reference = self._next_reference(args[0])
        x, fn, inplace, settings = entry[0](args, kwargs)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return func(*args, **kwargs)
        return _Rescaled.apply(x, reference, fn, entry[1], settings, inplace)

    def _next_reference(self, x: torch.Tensor) -> torch.Tensor:
        recorded = self.references.inputs
        if self.calls >= len(recorded) or recorded[self.calls].shape != x.shape:
            raise MethodError(
                "the model evaluated its nonlinearities differently on the input and on the "
                f"reference (call {self.calls + 1}: shape {tuple(x.shape)}); DeepLIFT pairs "
                "them in call order, so the forward pass must not branch on the input; use "
                "integrated_gradients for such a model"
            )
        self.calls += 1
        return recorded[self.calls - 1]


def _is_float(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


@contextmanager
def recorded_references(model: nn.Module | LoadedModel) -> Iterator[References]:
    """Record the input of every nonlinearity evaluated inside the block, in call order
    (detached copies). Run the reference batch of `rescale_rule` inside it."""
    refuse_scripted(as_module(model), "apply DeepLIFT's rescale rule to its nonlinearities")
    references = References()
    with _RecordMode(references):
        yield references


@contextmanager
def rescale_rule(model: nn.Module | LoadedModel, references: References) -> Iterator[None]:
    """Give each nonlinearity evaluated inside the block the rescale rule against the
    recorded reference input of the same call number (see the module docstring). The rule is
    bound when the forward pass runs inside the block; take the gradient after it. Raises
    `MethodError` when the calls do not match the recorded ones (count or shapes)."""
    refuse_scripted(as_module(model), "apply DeepLIFT's rescale rule to its nonlinearities")
    mode = _RescaleMode(references)
    with mode:
        yield
    if mode.calls != len(references.inputs):
        raise MethodError(
            f"the model evaluated {mode.calls} nonlinearities on the input but "
            f"{len(references.inputs)} on the reference; DeepLIFT pairs them in call order, "
            "so the forward pass must not branch on the input; use integrated_gradients"
        )
