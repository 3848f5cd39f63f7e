"""Backward rules for rectifiers: deconvnet and guided backpropagation.

Both methods are the input gradient of the target score with one change: the backward pass
through every rectifier is replaced. For an upstream gradient ``g`` at a rectifier with
input ``x``:

- plain gradient: ``g * 1[0 < x < t]`` (``t = inf`` for ReLU)
- deconvnet (Zeiler & Fergus 2014): ``g * 1[g > 0]`` (the forward input is ignored)
- guided backprop (Springenberg et al. 2015): ``g * 1[0 < x < t] * 1[g > 0]``

Rectifiers are the activation functions of the ReLU family, and only those: ``F.relu``,
``torch.relu``, ``Tensor.relu``, ``relu_`` (torch and Tensor), ``F.relu6`` and
``F.hardtanh(x, 0, t)`` with ``t > 0`` (a clipped ReLU such as ReLU6), and the modules that
call them (``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardtanh(0, t)``). Tensor arithmetic such as
``clamp``/``clip``/``clamp_min`` never counts, whatever its bounds: ``x.clamp(0, 1)`` is an
input guard or a range check, not an activation, and treating it as one turned guided
backprop of a ReLU-free model into the positive part of its plain gradient.

`backward_rule` applies a rule for the duration of a ``with`` block through a
``TorchFunctionMode``: every rectifier evaluated inside the block, whether it comes from a
module or a functional call, runs through a custom autograd function. The user's modules are never
replaced or edited (``inplace`` flags stay), in-place calls stay in-place, and the mode is
popped on exit, also after an exception. The forward values are exactly the usual ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens.errors import MethodError
from convlens.layers.borrow import refuse_scripted
from convlens.models.loading import LoadedModel, as_module

RULES = ("guided", "deconvnet")


class _RectifierWithRule(torch.autograd.Function):
    """``clamp(x, lower=0, upper)`` forward; the rule's backward."""

    @staticmethod
    def forward(ctx, x, upper, rule, inplace, reused):  # noqa: ANN001
        out = x.clamp_(min=0, max=upper) if inplace else x.clamp(min=0, max=upper)
        if inplace:
            ctx.mark_dirty(x)
        ctx.rule, ctx.upper, ctx.reused, ctx.passes = rule, upper, reused, None
        if rule == "guided":
            # The output, as the native backward keeps it (in-place calls overwrote x).
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None, None, None
        if ctx.passes is None:
            (out,) = ctx.saved_tensors
            if not ctx.reused:
                # The native rectifier backward (mask 0 < out < upper), then the positive
                # part in place on that new tensor: two kernels and one allocation, so
                # guided backprop costs what a plain input gradient costs.
                if ctx.upper is None:
                    masked = torch.ops.aten.threshold_backward(grad, out, 0)
                else:
                    masked = torch.ops.aten.hardtanh_backward(grad, out, 0, ctx.upper)
                return masked.clamp_(min=0), None, None, None, None
            # Kept for the next backward passes through this graph: making it reads and
            # writes what the native mask kernel would, and each later pass saves a kernel.
            ctx.passes = _passes(out, ctx.upper)
        # g * 1[0 < out < upper] * 1[g > 0] in one kernel.
        return torch.clamp(grad, grad.new_zeros(()), ctx.passes), None, None, None, None


def _passes(out: torch.Tensor, upper: float | None) -> torch.Tensor:
    """+inf where the rectifier passed its input (0 < out < upper), 0 elsewhere, in one
    kernel (the native rectifier backward of an infinite gradient): then
    ``clamp(g, 0, passes)`` is guided backprop's ``g * 1[0 < out < upper] * 1[g > 0]``
    (except that a NaN gradient stays NaN where the rectifier blocked, where the first pass
    gives 0: NaN there means the model's forward pass already overflowed)."""
    infinite = torch.full((), torch.inf, dtype=out.dtype, device=out.device).expand_as(out)
    if upper is None:
        return torch.ops.aten.threshold_backward(infinite, out, 0)
    return torch.ops.aten.hardtanh_backward(infinite, out, 0, upper)


def _relu_args(args: tuple, kwargs: dict, inplace_default: bool) -> tuple | None:
    inplace = kwargs.get("inplace", args[1] if len(args) > 1 else inplace_default)
    return args[0], None, bool(inplace)


def _relu6_args(args: tuple, kwargs: dict, inplace_default: bool) -> tuple | None:
    inplace = kwargs.get("inplace", args[1] if len(args) > 1 else inplace_default)
    return args[0], 6.0, bool(inplace)


def _hardtanh_args(args: tuple, kwargs: dict, inplace_default: bool) -> tuple | None:
    names = ("min_val", "max_val", "inplace")
    given = dict(zip(names, args[1:], strict=False)) | kwargs
    low, high = given.get("min_val", -1.0), given.get("max_val", 1.0)
    if low != 0 or not isinstance(high, Real) or high <= 0:
        return None
    return args[0], float(high), bool(given.get("inplace", inplace_default))


# Each rectifier entry point -> (argument parser, whether it is in-place by default). Only
# activation functions: clamp/clip are tensor arithmetic (input guards), never rectifiers.
_RECTIFIERS = {
    F.relu: (_relu_args, False),
    torch.relu: (_relu_args, False),
    torch.Tensor.relu: (_relu_args, False),
    torch.relu_: (_relu_args, True),
    torch.Tensor.relu_: (_relu_args, True),
    F.relu6: (_relu6_args, False),
    F.hardtanh: (_hardtanh_args, False),
    torch._C._nn.hardtanh_: (_hardtanh_args, True),
}


def is_rectifier(func, args: tuple, kwargs: dict) -> bool:  # noqa: ANN001
    """Whether ``func(*args, **kwargs)`` is a rectifier call (`_RECTIFIERS`: ReLU, ReLU6,
    hardtanh from 0): its output is never negative."""
    entry = _RECTIFIERS.get(func)
    return entry is not None and entry[0](args, kwargs, entry[1]) is not None


@dataclass
class RuleSession:
    """What a `backward_rule` block did: ``calls`` counts rectifier calls that got the rule."""

    rule: str
    reused: bool = False
    calls: int = 0

    def require_rectifiers(self, what: str) -> None:
        """`MethodError` when the block evaluated no rectifier: the rule changed nothing and
        ``what`` (a method's name) would silently be a plain gradient. The one check that
        attribution (deconvnet, guided backprop) and unit projection share."""
        if self.calls:
            return
        raise MethodError(
            f"{what}: the {self.rule} rule matched no rectifier (ReLU, ReLU6 or hardtanh(0, t) "
            "activations; clamp/clip do not count) in the model's forward pass, so the result "
            "would be a plain gradient; activations such as SiLU, GELU or tanh have no such "
            "rule: use a ReLU network, or the plain gradient ('saliency') instead"
        )


class _RuleMode(TorchFunctionMode):
    # rewrites rectifiers only: `input_gradients_only` may run inside it
    composes_with_input_gradients = True

    def __init__(self, session: RuleSession) -> None:
        super().__init__()
        self.session = session

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        entry = _RECTIFIERS.get(func)
        if entry is not None and torch.is_grad_enabled():
            parsed = entry[0](args, kwargs, entry[1])
            if parsed is not None:
                x, upper, inplace = parsed
                if isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point():
                    self.session.calls += 1
                    return _RectifierWithRule.apply(
                        x, upper, self.session.rule, inplace, self.session.reused
                    )
        return func(*args, **kwargs)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise MethodError(f"unknown backward rule {rule!r}; use one of {', '.join(RULES)}")


@contextmanager
def backward_rule(
    model: nn.Module | LoadedModel, rule: str, reused: bool = False
) -> Iterator[RuleSession]:
    """Apply ``rule`` ("guided" or "deconvnet") to the backward pass of every rectifier
    evaluated inside the block (modules and functional calls alike).

    The model is not touched: no hooks, no replaced modules; ``model`` is checked (no
    TorchScript parts, whose internals the rule cannot see). The rule is bound when the
    forward pass runs inside the block: ``torch.autograd.grad`` through that graph follows
    it, also after the block; a graph recorded outside stays plain. Yields a `RuleSession` whose
    ``calls`` counts the rectifier calls that got the rule. Reusable for any gradient
    (a class score, or one unit's activation for deconvnet projections). ``reused``: the
    graph will be backpropagated through several times (``retain_graph``, one seed at a
    time): each guided rectifier then keeps a mask the size of its output while the graph
    lives, and every backward pass costs one kernel per rectifier fewer.
    """
    _check_rule(rule)
    refuse_scripted(as_module(model), "apply a backward rule to its rectifiers")
    session = RuleSession(rule, reused)
    with _RuleMode(session):
        yield session
