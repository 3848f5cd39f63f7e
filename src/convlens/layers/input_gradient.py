"""Cheaper backward passes for when only the input gradient is asked for (the gradient
methods of `convlens.explain`; a scan's projections: one forward pass per image, then one
backward pass per unit through it).

Inside `input_gradients_only`, three kinds of call get a custom autograd function with the
same forward values and a backward that computes the input gradient alone:

- eval-mode ``F.batch_norm``: a fixed per-channel affine map, so its input gradient is
  ``grad * weight / sqrt(var + eps)``, one multiplication (the native backward took about
  three times as long on CPU for a large map);
- ``F.conv2d`` with numeric padding: the input gradient is the transposed convolution of
  ``grad`` with the same weight (``conv_transpose2d``); a 1x1 convolution with stride 1 and
  no padding is one matrix product (`channel_product`) on a channels-last input, and on a
  contiguous one where that pays (`product_pays`); a strided one, on the CPU, the product
  placed on a zero map (`pointwise_transpose`); the gradient comes back in the input's
  layout;
- ``F.pad`` with a constant and no cropping: the gradient's view without the padding (the
  native backward copies it).

`fold_batch_norm_scales` then folds each batch norm's per-channel scale into the weight
of the convolution that produced its input, where that convolution's output feeds nothing
else on the way to the seed (checked on the recorded graph): the batch norm's backward
becomes the identity and the convolution's backward uses ``weight * scale`` (per output
channel), computed once per forward pass, so every backward pass through the graph skips
a multiplication over the map. Without the call nothing is folded.

No gradient reaches weights, biases or statistics: use this only where the input gradient
is all that is asked for. A forward pass that takes a gradient itself (a test-time
adaptation step) is run again natively by `input_gradient_forward`; functorch transforms
(``vmap``, ``jacrev``) and calls under a function mode convlens did not open stay native.
The model is not touched; the mode is popped on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from convlens.layers.receptive import as_pair

T = TypeVar("T")


class _EvalBatchNorm(torch.autograd.Function):
    """``F.batch_norm`` in eval mode forward; the input gradient only backward (the
    identity once `fold_batch_norm_scales` moved the scale into the producing convolution)."""

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps):  # noqa: ANN001
        ctx.scale = torch.rsqrt(var + eps) if weight is None else weight * torch.rsqrt(var + eps)
        ctx.producer, ctx.folded = None, False
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        if ctx.folded:
            return grad, None, None, None, None, None
        shape = (1, -1) + (1,) * (grad.dim() - 2)
        return grad * ctx.scale.view(shape), None, None, None, None, None


class _InputGradientConv(torch.autograd.Function):
    """``F.conv2d`` forward; the input gradient only backward (a transposed convolution, or
    for a 1x1 unpadded convolution the matrix product of `pointwise_transpose` where that
    is faster)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # noqa: ANN001
        ctx.save_for_backward(weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.input_size = tuple(x.shape[-2:])
        ctx.channels_last = _channels_last(x)
        ctx.scale, ctx.scaled_weight = None, None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        stride, padding, dilation, groups = ctx.geometry
        weight = _backward_weight(ctx)
        if ctx.channels_last:
            # the input's layout: a seed made contiguous (a one-hot unit) would otherwise
            # take every layer below it out of channels-last, about 1.4x slower on CPU
            grad = grad.contiguous(memory_format=torch.channels_last)
        pointwise = pointwise_stride(weight, stride, padding, groups)
        gradient = None
        if pointwise is not None:
            gradient = pointwise_transpose(
                grad, weight, pointwise, ctx.input_size, ctx.channels_last
            )
        if gradient is None:
            extra = _output_padding(
                ctx.input_size, grad.shape[-2:], weight, stride, padding, dilation
            )
            gradient = F.conv_transpose2d(
                grad, weight, None, stride, padding, extra, groups, dilation
            )
        return gradient, None, None, None, None, None, None


class _InputGradientPad(torch.autograd.Function):
    """``F.pad`` with a constant and no cropping forward; backward: the gradient's view
    without the padding (the native backward copies it into a new tensor)."""

    @staticmethod
    def forward(ctx, x, pad, value):  # noqa: ANN001
        ctx.pad, ctx.size = pad, x.shape
        return F.pad(x, pad, "constant", value)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        for pair in range(len(ctx.pad) // 2):
            dim = grad.dim() - 1 - pair
            grad = grad.narrow(dim, ctx.pad[2 * pair], ctx.size[dim])
        return grad, None, None


def _channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out channels-last and not also plainly contiguous (one channel
    or one pixel fits both)."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def _backward_weight(ctx) -> torch.Tensor:  # noqa: ANN001
    """The convolution's weight, times the folded batch-norm scale per output channel
    (computed on the first backward pass through this forward pass, then reused)."""
    (weight,) = ctx.saved_tensors
    if ctx.scale is None:
        return weight
    if ctx.scaled_weight is None:
        ctx.scaled_weight = weight * ctx.scale.view(-1, 1, 1, 1)
    return ctx.scaled_weight


def pointwise_stride(  # noqa: ANN001
    weight: torch.Tensor, stride, padding, groups: int
) -> tuple[int, int] | None:
    """The stride of a 1x1, unpadded, ungrouped convolution (a matrix product over the
    channels at every pixel it reads); None for any other convolution."""
    if (
        weight.dim() != 4
        or weight.shape[-2:] != (1, 1)
        or groups != 1
        or isinstance(padding, str)
        or as_pair(padding) != (0, 0)
    ):
        return None
    return as_pair(stride)


def pointwise_transpose(
    s: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    input_size: tuple[int, int],
    channels_last: bool = False,
) -> torch.Tensor | None:
    """``T(s, weight)``, the transposed convolution of ``s`` ``Tensor[B, K, h, w]`` with a
    1x1 unpadded ungrouped ``weight`` ``Tensor[K, C, 1, 1]`` of ``stride`` (see
    `pointwise_stride`) back to an input of ``input_size``, as a matrix product where that
    is faster than oneDNN's transposed convolution; None where it is not (then use that).

    Stride 1: `channel_product` where `product_pays` or the map is ``channels_last``.
    A larger stride (a ResNet's downsampling shortcut), on the CPU: the product on the
    pixels the forward pass read, placed every ``stride`` rows and columns of a zero map
    (oneDNN took 55 ms for ResNet-50's first such layer at batch 8, this 9 ms)."""
    matrix = weight.reshape(weight.shape[0], -1)
    if stride == (1, 1):
        return channel_product(s, matrix) if channels_last or product_pays(s) else None
    if s.device.type != "cpu":
        return None
    product = channel_product(s, matrix)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    size = (*product.shape[:2], *input_size)
    placed = torch.empty(size, dtype=s.dtype, device=s.device, memory_format=layout).zero_()
    placed[:, :, :: stride[0], :: stride[1]] = product
    return placed


# Pixels of a map from which a 1x1 convolution's input gradient (or an LRP rule's terms)
# runs faster as a matrix product than through oneDNN on the CPU for a contiguous batch
# (ResNet-50 at batch 8: 2-5x at 56 x 56, 1.3x at 28 x 28, even at 14 x 14, slower at
# 7 x 7 with 2048 channels; docs/performance.md).
PRODUCT_PIXELS = 28 * 28


def product_pays(t: torch.Tensor) -> bool:
    """Whether a 1x1 convolution's terms on ``t`` ``Tensor[B, C, H, W]`` are better computed
    as a matrix product (`channel_product`) than by oneDNN: on the CPU, from `PRODUCT_PIXELS`."""
    return t.device.type == "cpu" and t.shape[-2] * t.shape[-1] >= PRODUCT_PIXELS


def channel_product(
    t: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``Tensor[B, K, H, W]`` with ``out[b, k, y, x] = sum_c t[b, c, y, x] matrix[c, k]``
    (``+ bias[k]``) for ``t`` ``Tensor[B, C, H, W]``, in ``t``'s layout and without copying
    it: a contiguous batch as ``matrix^T`` times each image's ``[C, H*W]``, a channels-last
    one as its rows of pixels times ``matrix``; the bias added by the same product."""
    batch, channels, height, width = t.shape
    if t.is_contiguous():
        images = t.view(batch, channels, height * width)
        # bmm of the expanded matrix: torch.matmul of a matrix and a batch would fold the
        # batch into rows, copying it channels-last first
        weights = matrix.t().expand(batch, -1, -1)
        if bias is None:
            product = torch.bmm(weights, images)
        else:
            product = torch.baddbmm(bias.view(1, -1, 1), weights, images)
        return product.view(batch, matrix.shape[1], height, width)
    rows = t.permute(0, 2, 3, 1).reshape(-1, channels)
    product = rows @ matrix if bias is None else torch.addmm(bias, rows, matrix)
    # the channel count spelled out: an empty batch has no size to infer -1 from
    return product.view(batch, height, width, matrix.shape[1]).permute(0, 3, 1, 2)


def _output_padding(input_size, output_size, weight, stride, padding, dilation):  # noqa: ANN001
    """The ``output_padding`` that makes ``conv_transpose2d`` return ``input_size``: the
    rows and columns the strided forward pass never reached."""
    steps, pads, spreads = (as_pair(value) for value in (stride, padding, dilation))
    extra = []
    for axis in range(2):
        kernel = weight.shape[2 + axis]
        reached = (output_size[axis] - 1) * steps[axis] - 2 * pads[axis]
        extra.append(input_size[axis] - reached - spreads[axis] * (kernel - 1) - 1)
    return tuple(extra)


_BN_NAMES = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum")
_CONV_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _computed(t: object) -> bool:
    """Whether ``t`` is a tensor computed in the graph (a weight made from the input, as in
    dynamic convolutions): its gradient would reach the input, so the call stays native."""
    return isinstance(t, torch.Tensor) and t.grad_fn is not None


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def _autocast() -> bool:
    """Whether mixed precision is on: the gradients would arrive in another dtype than the
    saved weights, so the calls stay native."""
    return any(torch.is_autocast_enabled(device) for device in _AUTOCAST_DEVICES)


def _eval_norm_args(args: tuple, kwargs: dict):
    given = dict(zip(_BN_NAMES, args, strict=False)) | kwargs
    x, mean, var = given.get("input"), given.get("running_mean"), given.get("running_var")
    if given.get("training", False) or mean is None or var is None:
        return None
    if not (isinstance(x, torch.Tensor) and x.requires_grad and x.dim() >= 2):
        return None
    weight, bias = given.get("weight"), given.get("bias")
    if mean.requires_grad or var.requires_grad or _computed(weight) or _computed(bias):
        return None
    return x, mean, var, weight, bias, float(given.get("eps", 1e-5))


def _conv_args(args: tuple, kwargs: dict):
    given = dict(zip(_CONV_NAMES, args, strict=False)) | kwargs
    x, weight = given.get("input"), given.get("weight")
    padding = given.get("padding", 0)
    if not (isinstance(x, torch.Tensor) and x.requires_grad and x.dim() == 4):
        return None
    if not isinstance(weight, torch.Tensor) or isinstance(padding, str):
        return None
    if _computed(weight) or _computed(given.get("bias")):
        return None
    return (
        x,
        weight,
        given.get("bias"),
        given.get("stride", 1),
        padding,
        given.get("dilation", 1),
        int(given.get("groups", 1)),
    )


def _pad_args(args: tuple, kwargs: dict):
    given = dict(zip(("input", "pad", "mode", "value"), args, strict=False)) | kwargs
    x, pad = given.get("input"), given.get("pad")
    if given.get("mode", "constant") != "constant" or not isinstance(x, torch.Tensor):
        return None
    if not x.requires_grad or not all(isinstance(p, int) and p >= 0 for p in pad):
        return None
    value = given.get("value")
    return x, tuple(pad), 0.0 if value is None else value


def _eval_norm(x, mean, var, weight, bias, eps):  # noqa: ANN001, ANN202
    out = _EvalBatchNorm.apply(x, mean, var, weight, bias, eps)
    if isinstance(x.grad_fn, _InputGradientConv._backward_cls):
        out.grad_fn.producer = x.grad_fn  # a candidate for `fold_batch_norm_scales`
    return out


# function -> (argument parser, the input-gradient-only call)
_CALLS = {
    F.batch_norm: (_eval_norm_args, _eval_norm),
    F.conv2d: (_conv_args, _InputGradientConv.apply),
    F.pad: (_pad_args, _InputGradientPad.apply),
}


# Calls by which a forward pass differentiates something itself (a test-time adaptation
# step, a gradient feature): its backward would need what the block does not keep.
DIFFERENTIATING = (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward)


class GradientInForward(BaseException):
    """Raised inside `input_gradients_only` when the forward pass takes a gradient itself;
    `input_gradient_forward` then runs it again natively. A `BaseException`, so that a
    model's own ``except Exception`` does not swallow it."""


class _InputGradientMode(TorchFunctionMode):
    composes_with_input_gradients = True

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in DIFFERENTIATING:
            raise GradientInForward(func.__name__)
        entry = _CALLS.get(func)
        if entry is not None and torch.is_grad_enabled() and not _autocast() and _plain_autograd():
            parsed = entry[0](args, kwargs)
            if parsed is not None:
                return entry[1](*parsed)
        return func(*args, **kwargs)


@contextmanager
def input_gradients_only() -> Iterator[None]:
    """Inside the block, eval-mode batch normalisation, 2-D convolutions and constant
    padding keep their forward values and get an input-gradient-only backward (no weight,
    bias or statistics gradients); see the module's docstring. A gradient taken inside the
    block raises `GradientInForward` (run the forward pass through `input_gradient_forward`,
    which runs it again natively). Under a function mode that convlens did not open (a
    user's pruning or fake-quantisation mode, which may rewrite the calls) nothing is
    changed. The model is not touched; the mode is popped on exit."""
    open_modes = _get_current_function_mode_stack()
    if any(not getattr(mode, "composes_with_input_gradients", False) for mode in open_modes):
        yield
        return
    with _InputGradientMode():
        yield


def input_gradient_forward(run: Callable[[], T]) -> T:
    """``run()`` (a forward pass whose only gradient wanted afterwards is the input's) inside
    `input_gradients_only`; a forward pass that takes a gradient itself (a test-time
    adaptation step) is stopped there and run again natively, so whatever it did before
    that gradient (state it changed, random numbers drawn) happens twice. Not seen: a
    gradient taken inside TorchScript or a C++ extension, and a model whose bare
    ``except:`` swallows `GradientInForward`."""
    try:
        with input_gradients_only():
            return run()
    except GradientInForward:
        pass
    return run()  # outside the handler: an error of the native pass is reported alone


def _plain_autograd() -> bool:
    """Whether autograd records as usual here: not under functorch transforms (``vmap``,
    ``jacrev``), saved-tensor hooks (non-reentrant ``torch.utils.checkpoint``, which
    compares what the forward pass and its recomputation save) or a ``torch.compile``
    trace; under those the calls stay native."""
    return (
        not torch._C._are_functorch_transforms_active()
        and torch._C._autograd._top_saved_tensors_default_hooks(False) is None
        and not torch.compiler.is_compiling()
    )


def recorded_graph(*roots: torch.Tensor) -> tuple[list, dict[int, int]]:
    """The autograd nodes of the graph behind ``roots`` and how many edges lead to each (by
    ``id``; every node's Python object stays referenced meanwhile, so no ``id`` is
    reused)."""
    nodes: dict[int, object] = {}
    counts: dict[int, int] = {}
    stack = [root.grad_fn for root in roots if root.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in nodes:
            continue
        nodes[id(node)] = node
        for child, _ in node.next_functions:
            if child is not None:
                counts[id(child)] = counts.get(id(child), 0) + 1
                stack.append(child)
    return list(nodes.values()), counts


def fold_batch_norm_scales(root: torch.Tensor) -> int:
    """Fold, in the graph behind ``root`` (recorded inside `input_gradients_only`), each
    eval batch norm's scale into the convolution that produced its input, where nothing
    else on the way to ``root`` uses that convolution's output. Gradients of ``root`` (or
    of parts of it) stay the same within float rounding; returns how many were folded.
    The fold is for good: a backward pass from another output of the same forward pass,
    or a hook on a folded convolution's output, would see the unscaled gradient (the
    scan's projections seed elements of ``root`` and hook nothing below it)."""
    nodes, counts = recorded_graph(root)
    folded = 0
    for node in nodes:
        producer = getattr(node, "producer", None)
        if producer is not None and not node.folded and counts[id(producer)] == 1:
            producer.scale, producer.scaled_weight = node.scale, None
            node.folded = True
            folded += 1
    return folded
