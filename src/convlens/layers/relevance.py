"""Relevance propagation through a whole model, borrowed for one forward pass.

`relevance_rules` evaluates the model inside a ``TorchFunctionMode`` (like the rectifier
rules of `convlens.layers.rules`): no module is replaced, edited or hooked, and the forward
values are exactly the model's own. What changes is the backward pass of the graph it
records, whose "gradient" is relevance:

- every convolution and fully connected layer runs through a custom autograd function whose
  backward is the LRP rule the `Composite` assigns to it (by module name, by position:
  ``"first"``, or by kind: ``"conv"``/``"linear"``; see `convlens.layers.relevance_rules`);
- canonizers, for the call only: a BatchNorm evaluated on the output of a convolution or
  linear layer is folded into it (the folded weights ``W * g / sqrt(var + eps)`` and bias
  are tensors used by the rule; the user's parameters are never written); a BatchNorm that
  follows anything else passes relevance through;
- residual additions of two tensors that both depend on the input split relevance by
  contribution, ``R_a = a * R / stab(a + b)``; concatenations route it unchanged;
- element-wise activations (ReLU, ReLU6, hardtanh, SiLU, GELU, hardswish, leaky ReLU, ELU)
  pass relevance through; a product with a constant, or with a gate of fewer elements (a
  squeeze-excitation scale), passes it to the other factor: the gate counts as a constant;
- average and adaptive average pooling are linear layers (epsilon rule); max pooling routes
  relevance to its winners (its own backward).

Relevance is conserved by the epsilon, zero, z-plus and flat rules up to what biases absorb.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Number

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens.errors import MethodError
from convlens.layers.borrow import refuse_scripted
from convlens.layers.input_gradient import (
    DIFFERENTIATING,
    channel_product,
    pointwise_stride,
    pointwise_transpose,
    product_pays,
    recorded_graph,
)
from convlens.layers.receptive import as_pair
from convlens.layers.relevance_rules import (
    LinearOp,
    Rule,
    as_rule,
    needs_output,
    propagate,
    stabilize,
)
from convlens.layers.rules import is_rectifier
from convlens.layers.tokens import auto_reshape, channels_last, token_grid

_KINDS = ("first", "conv", "linear")


class Composite:
    """Which LRP rule each layer gets: ``Composite({"first": "flat", "conv": "zplus",
    "linear": "epsilon", "features.10": Rule("gamma", gamma=0.5)})``.

    Keys: a module name (wins), ``"first"`` (the first convolution or linear layer the
    forward pass evaluates), ``"conv"`` and ``"linear"`` (by kind), or an ``nn.Module``
    subclass. Values: a `Rule` or a rule name. Layers no key matches get epsilon."""

    def __init__(self, rules: Mapping[str | type, Rule | str], name: str = "custom") -> None:
        self.name = name
        self.rules = {key: as_rule(rule) for key, rule in rules.items()}

    def __repr__(self) -> str:
        return f"Composite({self.name!r})"

    def names(self) -> list[str]:
        """The module names among the keys."""
        return [k for k in self.rules if isinstance(k, str) and k not in _KINDS]

    def rule_for(self, name: str | None, module: nn.Module | None, kind: str, first: bool) -> Rule:
        """The rule of one layer (``kind`` "conv" or "linear")."""
        if name is not None and name in self.rules:
            return self.rules[name]
        if first and "first" in self.rules:
            return self.rules["first"]
        for key, rule in self.rules.items():
            if isinstance(key, type) and isinstance(module, key):
                return rule
        return self.rules.get(kind, Rule("epsilon"))


COMPOSITES: dict[str, Composite] = {
    "epsilon_plus_flat": Composite(
        {"first": "flat", "conv": "zplus", "linear": "epsilon"}, "epsilon_plus_flat"
    ),
    "epsilon_gamma_box": Composite(
        {"first": "zbox", "conv": "gamma", "linear": "epsilon"}, "epsilon_gamma_box"
    ),
    "epsilon_alpha2_beta1_flat": Composite(
        {"first": "flat", "conv": "alpha2_beta1", "linear": "epsilon"},
        "epsilon_alpha2_beta1_flat",
    ),
    "epsilon": Composite({"conv": "epsilon", "linear": "epsilon"}, "epsilon"),
}


def resolve_composite(composite: str | Composite) -> Composite:
    """A `Composite` from one or a built-in composite's name (`COMPOSITES`)."""
    if isinstance(composite, Composite):
        return composite
    if composite in COMPOSITES:
        return COMPOSITES[composite]
    raise MethodError(
        f"unknown LRP composite {composite!r}; use one of {', '.join(COMPOSITES)} "
        "or a convlens.Composite({...})"
    )


@dataclass
class _Saved:
    """The layer output a rule divides by; replaced by a copy before an in-place change."""

    z: torch.Tensor
    version: int


@dataclass
class RelevanceSession:
    """What a `relevance_rules` block did: ``layers`` linear layers given a rule,
    ``folded`` BatchNorms folded into them, ``gates`` products treated as constant gates."""

    composite: Composite
    layers: int = 0
    folded: int = 0
    gates: int = 0
    rules: list[tuple[str | None, str]] = field(default_factory=list)

    def require_layers(self) -> None:
        """`MethodError` when no convolution or linear layer got a rule."""
        if not self.layers:
            raise MethodError(
                "lrp: the model's forward pass evaluated no convolution or linear layer "
                "(F.conv2d / F.linear), so relevance propagation has nothing to apply"
            )


class _LinearRelevance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, compute, op, rule, bounds, saved_slot, nonnegative):  # noqa: ANN001
        out = compute()
        if needs_output(rule, op):
            saved_slot.append(_Saved(out.detach(), out._version))
        ctx.save_for_backward(x)
        ctx.op, ctx.rule, ctx.bounds, ctx.slot = op, rule, bounds, saved_slot
        ctx.nonnegative = nonnegative
        return out

    @staticmethod
    def backward(ctx, relevance):  # noqa: ANN001
        (x,) = ctx.saved_tensors
        z = None
        if ctx.slot:
            saved = ctx.slot[0]
            if saved.z._version != saved.version:
                raise MethodError(
                    "lrp: a layer output was changed in place by an operation convlens does "
                    "not know; relevance cannot be computed for this model"
                )
            z = saved.z
        r_in = propagate(ctx.rule, ctx.op, x.detach(), z, relevance, ctx.bounds, ctx.nonnegative)
        return r_in, None, None, None, None, None, None


class _PassThrough(torch.autograd.Function):
    """The op's forward; relevance passes to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x, compute, inplace):  # noqa: ANN001
        out = compute()
        if inplace:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    def backward(ctx, relevance):  # noqa: ANN001
        return relevance, None, None


class _SumRelevance(torch.autograd.Function):
    """``a + b`` (in place into ``a`` when asked); relevance split by contribution."""

    @staticmethod
    def forward(ctx, a, b, compute, inplace):  # noqa: ANN001
        ctx.terms = (a.detach().clone() if inplace else a.detach(), b.detach())
        out = compute()
        if inplace:
            ctx.mark_dirty(a)
        return out

    @staticmethod
    def backward(ctx, relevance):  # noqa: ANN001
        # Two new tensors instead of seven (on the CPU a fresh large tensor costs about as
        # much as the arithmetic that fills it); the saved terms stay as they are, since a
        # retained graph runs this again.
        a, b = ctx.terms
        total = torch.add(a, b)
        ratio = stabilize(total, 1e-6)
        ratio = torch.div(relevance, ratio, out=ratio)
        return torch.mul(a, ratio, out=total), ratio.mul_(b), None, None


def _autograd_transpose(apply):  # noqa: ANN001, ANN202
    def transpose(s: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(apply(leaf, weight, None), leaf, s)
        return gradient

    return transpose


def _conv_op(args: tuple, kwargs: dict, weight: torch.Tensor, bias: torch.Tensor | None):  # noqa: ANN202
    names = ("stride", "padding", "dilation", "groups")
    given = dict(zip(names, args[3:], strict=False)) | {k: kwargs[k] for k in names if k in kwargs}
    stride, padding = given.get("stride", 1), given.get("padding", 0)
    dilation, groups = given.get("dilation", 1), given.get("groups", 1)

    pointwise = pointwise_stride(weight, stride, padding, groups)

    def apply(x, w, b):  # noqa: ANN001, ANN202
        if pointwise == (1, 1) and product_pays(x):
            return channel_product(x, w.reshape(w.shape[0], -1).t(), b)
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    if isinstance(padding, str):
        transpose = _autograd_transpose(apply)
    else:

        def transpose(s, x, w):  # noqa: ANN001, ANN202
            if pointwise is not None:
                product = pointwise_transpose(s, w, pointwise, tuple(x.shape[-2:]))
                if product is not None:
                    return product
            return torch.ops.aten.convolution_backward(
                s,
                x,
                w,
                None,
                as_pair(stride),
                as_pair(padding),
                as_pair(dilation),
                False,
                [0, 0],
                groups,
                [True, False, False],
            )[0]

    return LinearOp(apply, transpose, weight, bias)


def _linear_op(weight: torch.Tensor, bias: torch.Tensor | None) -> LinearOp:
    return LinearOp(lambda x, w, b: F.linear(x, w, b), lambda s, x, w: s @ w, weight, bias)


def _pool_op(func, args: tuple, kwargs: dict) -> LinearOp:  # noqa: ANN001
    def apply(x, _w, _b):  # noqa: ANN001, ANN202
        return func(x, *args[1:], **kwargs)

    return LinearOp(apply, _autograd_transpose(apply), None, None)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: object) -> object:
    return kwargs[name] if name in kwargs else (args[index] if len(args) > index else default)


# activation -> (position of its `inplace` argument, in place by default)
_ACTIVATIONS = {
    F.relu: (1, False),
    torch.relu: (9, False),
    torch.Tensor.relu: (9, False),
    torch.relu_: (9, True),
    torch.Tensor.relu_: (9, True),
    F.relu6: (1, False),
    F.hardtanh: (3, False),
    torch._C._nn.hardtanh_: (9, True),
    F.silu: (1, False),
    F.gelu: (9, False),
    F.hardswish: (1, False),
    F.leaky_relu: (2, False),
    F.elu: (2, False),
}
_POOLS = (F.avg_pool2d, F.adaptive_avg_pool2d)
_ADDS = {
    torch.add: False,
    torch.Tensor.add: False,
    torch.Tensor.__add__: False,
    torch.Tensor.__radd__: False,
    torch.Tensor.__iadd__: True,
    torch.Tensor.add_: True,
}
_PRODUCTS = (
    torch.mul,
    torch.Tensor.mul,
    torch.Tensor.__mul__,
    torch.Tensor.__rmul__,
    torch.div,
    torch.Tensor.div,
    torch.Tensor.__truediv__,
)
_DIVIDES = (torch.div, torch.Tensor.div, torch.Tensor.__truediv__)


def _traced(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()


_RULE_NODES = (
    _LinearRelevance._backward_cls,
    _PassThrough._backward_cls,
    _SumRelevance._backward_cls,
)


class _RulesDifferentiated(BaseException):
    """A gradient taken inside the forward pass through layers recorded with relevance
    rules; `relevance_rules` reports it as a `MethodError`. A `BaseException`, so that a
    model's own ``except Exception`` does not swallow it."""


def _through_rules(differentiated: object) -> bool:
    """Whether the graph behind ``differentiated`` (a tensor or a sequence of them: the
    first argument of ``torch.autograd.grad`` / ``backward``) passes a layer recorded with a
    relevance rule, whose backward pass is relevance, not a gradient. convlens's own
    gradients inside the block (a registered reshape's grid) go through none."""
    tensors = [differentiated] if isinstance(differentiated, torch.Tensor) else differentiated
    if not isinstance(tensors, (list, tuple)):
        return False
    nodes, _ = recorded_graph(*(t for t in tensors if isinstance(t, torch.Tensor)))
    return any(isinstance(node, _RULE_NODES) for node in nodes)


class _RelevanceMode(TorchFunctionMode):
    def __init__(self, session: RelevanceSession, owners: dict, bounds) -> None:  # noqa: ANN001
        super().__init__()
        self.session, self.owners, self.bounds = session, owners, bounds
        self.last: tuple[torch.Tensor, torch.Tensor, LinearOp, Rule] | None = None
        self.slots: dict[int, tuple[torch.Tensor, list]] = {}
        # outputs of rectifiers (and max pooling of them): (tensor, its version then)
        self.nonnegatives: dict[int, tuple[weakref.ref, int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in DIFFERENTIATING and _through_rules(args[0] if args else None):
            raise _RulesDifferentiated(func.__name__)
        if not torch.is_grad_enabled() or not args or not _traced(args[0]):
            if func in _PRODUCTS and len(args) > 1 and _traced(args[1]):
                return self._product(func, args, kwargs)
            return func(*args, **kwargs)
        if func is F.conv2d or func is F.linear:
            return self._linear(func, args, kwargs)
        if func is F.batch_norm:
            return self._batch_norm(func, args, kwargs)
        if func in _ACTIVATIONS:
            position, default = _ACTIVATIONS[func]
            inplace = bool(_arg(args, kwargs, position, "inplace", default))
            out = self._pass(args[0], lambda: func(*args, **kwargs), inplace)
            if is_rectifier(func, args, kwargs):
                self._mark_nonnegative(out)
            return out
        if func is F.max_pool2d and self._nonnegative(args[0]):
            out = func(*args, **kwargs)
            self._mark_nonnegative(out)
            return out
        if func in _POOLS:
            return self._apply_rule(
                args[0], func, args, kwargs, _pool_op(func, args, kwargs), Rule("epsilon")
            )
        if func in _ADDS and len(args) > 1 and _traced(args[1]) and "alpha" not in kwargs:
            if args[0].shape == args[1].shape:
                inplace = _ADDS[func]
                if inplace:
                    self._protect(args[0])
                return _SumRelevance.apply(args[0], args[1], lambda: func(*args, **kwargs), inplace)
        if func in _PRODUCTS and len(args) > 1:
            return self._product(func, args, kwargs)
        return func(*args, **kwargs)

    def _pass(self, x: torch.Tensor, compute, inplace: bool) -> torch.Tensor:  # noqa: ANN001
        if inplace:
            self._protect(x)
        return _PassThrough.apply(x, compute, inplace)

    def _product(self, func, args: tuple, kwargs: dict) -> torch.Tensor:  # noqa: ANN001
        a, b = args[0], args[1]
        divide = func in _DIVIDES
        if _traced(a) and _traced(b):
            if divide or a.shape == b.shape:
                return func(*args, **kwargs)
            self.session.gates += 1
            x = a if a.numel() > b.numel() else b
        elif _traced(a) and isinstance(b, (torch.Tensor, Number)):
            x = a
        elif _traced(b) and not divide and isinstance(a, (torch.Tensor, Number)):
            x = b
        else:
            return func(*args, **kwargs)
        return _PassThrough.apply(x, lambda: func(*args, **kwargs), False)

    def _mark_nonnegative(self, tensor: object) -> None:
        if isinstance(tensor, torch.Tensor):
            self.nonnegatives[id(tensor)] = (weakref.ref(tensor), tensor._version)

    def _nonnegative(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a rectifier's output not changed in place since (by an
        operation that counts versions: a write through ``.data`` or a NumPy view is not
        seen, and would let z-plus skip a negative part that is there)."""
        entry = self.nonnegatives.get(id(tensor))
        return entry is not None and entry[0]() is tensor and entry[1] == tensor._version

    def _protect(self, tensor: torch.Tensor) -> None:
        """Before ``tensor`` changes in place: the rule that divides by it keeps a copy."""
        entry = self.slots.get(id(tensor))
        if entry is not None and entry[0] is tensor:
            saved = entry[1][0]
            entry[1][0] = _Saved(saved.z.clone(), saved.version)
            del self.slots[id(tensor)]

    def _linear(self, func, args: tuple, kwargs: dict) -> torch.Tensor:  # noqa: ANN001
        x, weight = args[0], _arg(args, kwargs, 1, "weight", None)
        bias = _arg(args, kwargs, 2, "bias", None)
        name, module = self.owners.get(id(weight), (None, None))
        kind = "conv" if func is F.conv2d else "linear"
        rule = self.session.composite.rule_for(name, module, kind, self.session.layers == 0)
        self.session.layers += 1
        self.session.rules.append((name, rule.name))
        op = _conv_op(args, kwargs, weight, bias) if kind == "conv" else _linear_op(weight, bias)
        out = self._apply_rule(x, func, args, kwargs, op, rule)
        self.last = (out, x, op, rule)
        return out

    def _apply_rule(self, x, func, args, kwargs, op: LinearOp, rule: Rule, compute=None):  # noqa: ANN001
        slot: list = []
        compute = compute or (lambda: func(*args, **kwargs))
        bounds = self.bounds if rule.name == "zbox" else None
        nonnegative = self._nonnegative(x)
        out = _LinearRelevance.apply(x, compute, op, rule, bounds, slot, nonnegative)
        if slot:  # only a rule that reads the output keeps it (and copies it before in-place)
            self.slots[id(out)] = (out, slot)
        return out

    def _batch_norm(self, func, args: tuple, kwargs: dict) -> torch.Tensor:  # noqa: ANN001
        names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        given = dict(zip(names, args[1:], strict=False)) | kwargs
        compute = lambda: func(*args, **kwargs)  # noqa: E731
        mean, var = given.get("running_mean"), given.get("running_var")
        foldable = self.last is not None and self.last[0] is args[0]
        if not foldable or given.get("training") or mean is None:
            return self._pass(args[0], compute, False)
        _, x, op, rule = self.last
        scale = (var + given.get("eps", 1e-5)).rsqrt()
        if given.get("weight") is not None:
            scale = scale * given["weight"]
        shift = -mean * scale + (given["bias"] if given.get("bias") is not None else 0)
        bias = shift if op.bias is None else op.bias * scale + shift
        folded = LinearOp(op.apply, op.transpose, op.stored.detach(), bias.detach(), scale.detach())
        self.session.folded += 1
        out = self._apply_rule(x, func, args, kwargs, folded, rule, compute)
        self.last = None
        return out


def _owners(model: nn.Module) -> dict[int, tuple[str, nn.Module]]:
    owners = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            owners[id(weight)] = (name, module)
    return owners


@contextmanager
def relevance_rules(
    model: nn.Module,
    composite: str | Composite,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[RelevanceSession]:
    """Record the forward passes run inside the block with LRP backward rules (see the
    module docstring): the input gradient of a graph recorded here is relevance when the
    output gradient is the output relevance. ``bounds``: ``(low, high)`` ``Tensor[1, C, 1,
    1]``, the input range for the z^B rule. Run the backward pass after the block.
    The model is not touched; names in ``composite`` must be modules of ``model``."""
    composite = resolve_composite(composite)
    refuse_scripted(model, "propagate relevance through its layers")
    known = {name for name, _ in model.named_modules()}
    missing = [name for name in composite.names() if name not in known]
    if missing:
        raise MethodError(
            f"the LRP composite names {', '.join(missing)}, which the model does not have; "
            "see 'convlens layers' for its module names"
        )
    session = RelevanceSession(composite)
    try:
        with _RelevanceMode(session, _owners(model), bounds):
            yield session
    except _RulesDifferentiated:
        raise MethodError(
            "lrp: the model takes a gradient inside its forward pass through layers that "
            "carry relevance rules (a test-time adaptation step, say); the rules replace "
            "their backward pass, so that gradient cannot be taken: explain this model with "
            "saliency, input_x_gradient or integrated_gradients"
        ) from None


class _KeepChannels(torch.autograd.Function):
    """Identity forward (a copy); the backward keeps, in row ``i``, only channel
    ``channels[i]`` (along dimension ``dim``) of the relevance: CRP's conditioning on one
    concept per row."""

    @staticmethod
    def forward(ctx, x, channels, dim):  # noqa: ANN001
        ctx.channels, ctx.dim = channels, dim
        return x.clone()

    @staticmethod
    def backward(ctx, relevance):  # noqa: ANN001
        rows = torch.arange(len(relevance), device=relevance.device)
        channels = ctx.channels.to(relevance.device)
        moved = relevance.movedim(ctx.dim, 1)
        kept = torch.zeros_like(moved)
        kept[rows, channels] = moved[rows, channels]
        return kept.movedim(1, ctx.dim), None, None


def channel_dim(model: nn.Module, layer: nn.Module, output: torch.Tensor) -> int:
    """The dimension of ``layer``'s raw ``output`` that holds its channels: 1, or the last
    for a token layer or a channels-last one (`convlens.layers.tokens.auto_reshape`).
    `MethodError` for a reshape registered by the user, whose channel axis is unknown."""
    reshape = auto_reshape(model, layer, output, output.shape[0])
    if reshape is None:
        return 1
    if reshape is channels_last or getattr(reshape, "func", None) is token_grid:
        return output.dim() - 1
    raise MethodError(
        "concept relevance cannot tell the channel axis of a layer with a registered "
        "reshape; condition on a layer whose output is [B, C, ...] or standard tokens"
    )


@contextmanager
def keep_channels(model: nn.Module, layer: nn.Module, channels: torch.Tensor) -> Iterator[None]:
    """For the block, the relevance passing back through ``layer``'s output keeps only
    channel ``channels[i]`` (``Tensor[B]`` of ints) in batch row ``i`` (a forward hook,
    removed on exit, also after an exception); channels are on `channel_dim` of the output
    (tokens: every token's channel). Its output is a copy, so a BatchNorm right after
    ``layer`` is not folded into it: condition on the BatchNorm or the activation."""

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            raise MethodError("concept relevance needs a layer whose output is a Tensor[B, C, ...]")
        dim = channel_dim(model, layer, output)
        count = output.shape[dim]
        if int(channels.max()) >= count or int(channels.min()) < 0:
            raise MethodError(
                f"channel out of range: the layer has {count} channels "
                f"(0..{count - 1}), asked for {channels.tolist()}"
            )
        return _KeepChannels.apply(output, channels, dim)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
