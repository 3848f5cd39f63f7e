"""Eval-mode batch normalisation with a one-multiplication input-gradient backward: the
same forward values, and the input gradient of the native backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.layers.eval_norm import input_gradient_batch_norm

pytestmark = pytest.mark.usefixtures("one_thread")


def _norm(module: nn.Module, channels: int) -> nn.Module:
    generator = torch.Generator().manual_seed(channels)
    module.running_mean.copy_(torch.randn(channels, generator=generator))
    module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    if module.affine:
        module.weight.data.copy_(torch.randn(channels, generator=generator))
        module.bias.data.copy_(torch.randn(channels, generator=generator))
    return module.eval()


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
    upstream = torch.randn(shape, generator=generator)
    native = norm(x)
    (want,) = torch.autograd.grad(native, x, upstream)
    with unchanged(norm, x), input_gradient_batch_norm():
        cheap = norm(x)
    assert type(cheap.grad_fn).__name__ == "_EvalBatchNormBackward"
    (got,) = torch.autograd.grad(cheap, x, upstream)
    assert torch.equal(cheap, native)
    # rsqrt(var + eps) * weight against the native kernel's own order: a few ulps
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_training_mode_and_constant_inputs_keep_the_native_function():
    norm = _norm(nn.BatchNorm2d(3), 3).train()
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    with input_gradient_batch_norm():
        trained = norm(x)
        constant = F.batch_norm(x.detach(), norm.running_mean, norm.running_var)
    assert "NativeBatchNorm" in type(trained.grad_fn).__name__  # batch statistics
    assert constant.grad_fn is None
