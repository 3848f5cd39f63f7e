"""Eval-mode batch normalisation with a one-multiplication input-gradient backward: the
same forward values, and the input gradient of the native backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.layers.input_gradient import (
    GradientInForward,
    channel_product,
    fold_batch_norm_scales,
    input_gradient_forward,
    input_gradients_only,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _norm(module: nn.Module, channels: int) -> nn.Module:
    generator = torch.Generator().manual_seed(channels)
    module.running_mean.copy_(torch.randn(channels, generator=generator))
    module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    if module.affine:
        module.weight.data.copy_(torch.randn(channels, generator=generator))
        module.bias.data.copy_(torch.randn(channels, generator=generator))
    return module.eval()


def _cheap_and_native(module: nn.Module, x: torch.Tensor, generator, unchanged):
    """``module(x)`` inside `input_gradients_only` (asserted equal to the native output, the
    module and ``x`` unchanged), its input gradient for a seeded upstream gradient, and the
    native input gradient."""
    native = module(x)
    upstream = torch.randn(native.shape, generator=generator)
    (want,) = torch.autograd.grad(native, x, upstream)
    with unchanged(module, x), input_gradients_only():
        cheap = module(x)
    (got,) = torch.autograd.grad(cheap, x, upstream, retain_graph=True)
    assert torch.equal(cheap, native)
    return cheap, got, want


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.BatchNorm2d(5), (2, 5, 4, 3)),
        (nn.BatchNorm2d(5, affine=False, eps=1e-3), (1, 5, 6, 6)),
        (nn.BatchNorm1d(4), (3, 4)),
    ],
)
def test_same_values_and_input_gradient_as_native(module, shape, unchanged):
    norm = _norm(module, shape[1])
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator, requires_grad=True)
    cheap, got, want = _cheap_and_native(norm, x, generator, unchanged)
    assert type(cheap.grad_fn).__name__ == "_EvalBatchNormBackward"
    # rsqrt(var + eps) * weight against the native kernel's own order: a few ulps
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_training_mode_and_constant_inputs_keep_the_native_function():
    norm = _norm(nn.BatchNorm2d(3), 3).train()
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    with input_gradients_only():
        trained = norm(x)
        constant = F.batch_norm(x.detach(), norm.running_mean, norm.running_var)
    assert "NativeBatchNorm" in type(trained.grad_fn).__name__  # batch statistics
    assert constant.grad_fn is None


def _conv(shape, groups: int = 1, **geometry) -> nn.Conv2d:
    out_channels, in_channels, kernel = shape
    torch.manual_seed(out_channels * 7 + kernel)
    return nn.Conv2d(in_channels, out_channels, kernel, groups=groups, **geometry).eval()


CONVOLUTIONS = [
    (_conv((6, 4, 1)), (2, 4, 5, 7)),  # 1x1: one matrix product
    (_conv((6, 6, 3), groups=6, stride=2), (1, 6, 9, 8)),  # depthwise, odd size: output padding
    (_conv((6, 4, 3), groups=2, padding=(1, 2), dilation=2), (1, 4, 10, 9)),
    (_conv((5, 3, 3), stride=(2, 3), padding=1), (2, 3, 11, 13)),
    (_conv((4, 4, 1), stride=2), (1, 4, 6, 6)),  # strided 1x1: a product placed on a zero map
    (_conv((5, 3, 1), stride=(2, 3)), (2, 3, 7, 8)),  # the last column never read
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("conv", "shape"), CONVOLUTIONS)
def test_convolution_input_gradient_equals_native(conv, shape, channels_last, unchanged):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    cheap, got, want = _cheap_and_native(conv, x, generator, unchanged)
    assert type(cheap.grad_fn).__name__ == "_InputGradientConvBackward"
    assert got.shape == x.shape
    # in the input's layout though the upstream gradient is contiguous (a one-hot seed is):
    # a scan's backward pass stays channels-last through every layer below the unit
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    # the same sums in another order (transposed convolution or one matrix product)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_constant_padding_gradient_is_the_unpadded_view():
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    upstream = torch.randn(2, 3, 5 + 3, 4 + 1)
    native = F.pad(x, (0, 1, 2, 1), value=0.5)
    with input_gradients_only():
        cheap = F.pad(x, (0, 1, 2, 1), value=0.5)
        reflected = F.pad(x, (1, 1, 1, 1), mode="reflect")
    assert torch.equal(cheap, native)
    assert "ReflectionPad" in type(reflected.grad_fn).__name__  # only constant padding
    (got,) = torch.autograd.grad(cheap, x, upstream)
    assert torch.equal(got, upstream[:, :, 2:7, 0:4])


class _ConvNormNet(nn.Module):
    """conv -> norm -> ReLU6 -> conv -> norm, and optionally the second convolution's raw
    output added to its normalised one (a second consumer: no fold there)."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.shared = shared
        self.conv1, self.norm1 = nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8)
        self.conv2, self.norm2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        for channels, norm in ((8, self.norm1), (8, self.norm2)):
            _norm(norm, channels)

    def forward(self, x):  # noqa: ANN001
        hidden = F.relu6(self.norm1(self.conv1(x)))
        raw = self.conv2(hidden)
        out = self.norm2(raw)
        return out + raw if self.shared else out


@pytest.mark.parametrize(("shared", "folds"), [(False, 2), (True, 1)])
def test_folded_scales_give_the_native_gradient(shared, folds, unchanged):
    net = _ConvNormNet(shared).eval()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 9, generator=generator, requires_grad=True)
    native = net(x)
    upstream = torch.randn(native.shape, generator=generator)
    (want,) = torch.autograd.grad(native, x, upstream)
    with unchanged(net, x), input_gradients_only():
        cheap = net(x)
    assert fold_batch_norm_scales(cheap) == folds
    assert fold_batch_norm_scales(cheap) == 0  # nothing folds twice
    for _ in range(2):  # the scaled weights are made once and reused
        (got,) = torch.autograd.grad(cheap, x, upstream, retain_graph=True)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weights_computed_from_the_input_and_mixed_precision_stay_native():
    """A weight made from the input (dynamic convolution, conditional norm) passes gradient
    to the input through the weight, and under autocast gradients arrive in another dtype:
    both keep the native call."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 6, 6, generator=generator, requires_grad=True)
    base = torch.randn(4, 3, 3, 3, generator=generator)
    scale = torch.rand(4, generator=generator) + 0.5

    def dynamic(inputs):  # noqa: ANN001, ANN202
        weight = base * inputs.mean()
        return F.batch_norm(
            F.conv2d(inputs, weight, padding=1),
            torch.zeros(4),
            torch.ones(4),
            scale * inputs.mean(),
            None,
            False,
            0.0,
            1e-5,
        )

    native = dynamic(x)
    upstream = torch.randn(native.shape, generator=generator)
    (want,) = torch.autograd.grad(native, x, upstream)
    with input_gradients_only():
        cheap = dynamic(x)
    assert fold_batch_norm_scales(cheap) == 0
    (got,) = torch.autograd.grad(cheap, x, upstream)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    conv = _conv((4, 3, 3))
    with input_gradients_only(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = conv(x)
    assert "_InputGradient" not in type(mixed.grad_fn).__name__


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_channel_product_is_a_1x1_convolution_in_either_layout(channels_last, with_bias):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 4, 6, generator=gen)
    weight, bias = torch.randn(7, 5, 1, 1, generator=gen), torch.randn(7, generator=gen)
    laid = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    got = channel_product(laid, weight.view(7, 5).t(), bias if with_bias else None)
    want = F.conv2d(x, weight, bias if with_bias else None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    empty = channel_product(laid[:0], weight.view(7, 5).t())  # no batch to infer sizes from
    assert empty.shape == (0, 7, 4, 6)


class _Adapting(nn.Module):
    """Adapts its convolution and batch norm at test time: one gradient step on its own loss
    inside ``forward`` (weight and batch-norm gradients, differentiable: ``create_graph``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(21)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = _norm(nn.BatchNorm2d(4), 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            loss = self.norm(self.conv(x)).square().mean()
            steps = torch.autograd.grad(
                loss, (self.conv.weight, self.norm.weight), create_graph=True
            )
        weight = self.conv.weight - 0.1 * steps[0]
        scale = self.norm.weight - 0.1 * steps[1]
        h = F.batch_norm(
            F.conv2d(x, weight, self.conv.bias, padding=1),
            self.norm.running_mean,
            self.norm.running_var,
            scale,
            self.norm.bias,
        )
        return self.head(torch.relu(h).mean((2, 3)))


class _Ensemble(nn.Module):
    """Two members run by ``torch.func.vmap`` over their stacked parameters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(22)
        self.members = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3, 4, 3), _norm(nn.BatchNorm2d(4), 4)) for _ in range(2)
        )
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params, buffers = torch.func.stack_module_state(list(self.members))

        def member(p, b, images):  # noqa: ANN001, ANN202
            return torch.func.functional_call(self.members[0], (p, b), (images,))

        out = torch.func.vmap(member, in_dims=(0, 0, None))(params, buffers, x)
        return self.head(out.mean((0, 3, 4)))


class _Pruning(torch.overrides.TorchFunctionMode):
    """A user's mode that rewrites every convolution's weight (magnitude pruning)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is F.conv2d:
            args = (args[0], args[1] * (args[1].abs() > 0.1), *args[2:])
        return func(*args, **(kwargs or {}))


def _native_and_cheap(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input gradient of the summed outputs, native and with the forward pass through
    `input_gradient_forward` (the backward pass after it, as explain runs it)."""
    leaf = x.clone().requires_grad_(True)
    (native,) = torch.autograd.grad(model(leaf).sum(), leaf)
    leaf = x.clone().requires_grad_(True)
    output = input_gradient_forward(lambda: model(leaf))
    (cheap,) = torch.autograd.grad(output.sum(), leaf)
    return native, cheap


@pytest.mark.parametrize("model", [_Adapting, _Ensemble], ids=["test-time-step", "vmap"])
def test_models_that_differentiate_inside_forward_get_the_native_gradient(model, unchanged):
    # a forward pass that takes gradients itself (weights, batch-norm scales, differentiably)
    # runs again natively; functorch transforms run natively
    net = model().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with unchanged(net, x):
        native, cheap = _native_and_cheap(net, x)
    torch.testing.assert_close(cheap, native, rtol=1e-5, atol=1e-7)
    assert native.abs().amax() > 0


def test_a_users_function_mode_keeps_every_call_native():
    # under a mode convlens did not open (it may rewrite the calls) nothing is changed: the
    # gradient follows the rewritten weights, as natively
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    torch.manual_seed(23)
    x = torch.randn(2, 3, 9, 9)
    with _Pruning():
        native, cheap = _native_and_cheap(net, x)
        output = input_gradient_forward(lambda: net(x.clone().requires_grad_(True)))
    assert type(output.grad_fn).__name__ == "ConvolutionBackward0"
    torch.testing.assert_close(cheap, native, rtol=1e-6, atol=1e-8)


def test_a_gradient_taken_inside_the_block_stops_it():
    # what `input_gradient_forward` catches to run the pass again natively; a model's own
    # ``except Exception`` does not swallow it
    conv = nn.Conv2d(3, 2, 3).eval()
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    with pytest.raises(GradientInForward), input_gradients_only():
        try:
            torch.autograd.grad(conv(x).sum(), conv.weight)
        except Exception:  # noqa: BLE001
            pytest.fail("the model's handler caught it")


class _Checkpointed(nn.Module):
    """A block run through non-reentrant ``torch.utils.checkpoint`` (timm's
    ``set_grad_checkpointing``): its recomputation must save what the forward pass saved."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(24)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), _norm(nn.BatchNorm2d(4), 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.utils.checkpoint.checkpoint(self.block, self.stem(x), use_reentrant=False)
        return self.head(torch.relu(h).mean((2, 3)))


def test_checkpointed_blocks_stay_native():
    net = _Checkpointed().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    native, cheap = _native_and_cheap(net, x)
    torch.testing.assert_close(cheap, native, rtol=1e-5, atol=1e-7)
