"""Traced receptive fields equal gradient-measured ones on three architectures."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.layers import layer_table, receptive_field


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the measured layer has run."""


def measured_boxes(model: nn.Module, name: str, shape, units, seeds: int = 3):
    """For each unit ``(row, col)`` of layer ``name``, the bounding box of the input pixels
    whose gradient w.r.t. that unit (summed over channels) is non-zero for some random
    input: the union over ``seeds`` inputs, so ReLU and max-pool zeros do not shrink it.

    One batched forward (stopped at the layer) and one backward: batch item
    ``seed * len(units) + u`` back-propagates only unit ``u``; in eval mode items are
    independent, so each item's input gradient is that unit's alone.
    """
    module = dict(model.named_modules())[name]
    generator = torch.Generator().manual_seed(0)
    count = seeds * len(units)
    inputs = torch.randn((count, *shape[1:]), generator=generator).requires_grad_()
    seen: dict[str, torch.Tensor] = {}

    def stop(_module, _inputs, output):
        seen["out"] = output
        raise _Stop

    handle = module.register_forward_hook(stop)
    try:
        model(inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    rows = torch.tensor([r for r, _ in units] * seeds)
    cols = torch.tensor([c for _, c in units] * seeds)
    picked = seen["out"][torch.arange(count), :, rows, cols]  # [count, C]
    (grad,) = torch.autograd.grad(picked.sum(), inputs)
    support = (grad.abs().sum(1) > 0).view(seeds, len(units), *shape[-2:]).any(0)
    boxes = []
    for hit in support:
        ys, xs = torch.nonzero(hit, as_tuple=True)
        boxes.append((int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())))
    return boxes


class PlainStack(nn.Module):
    """Convolutions with padding, stride and dilation, and both pooling kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2, padding=1)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.pool2 = nn.AvgPool2d(2)
        self.conv3 = nn.Conv2d(8, 4, 3, stride=1, padding=0)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.conv3(x)


def _check(model: nn.Module, shape, names) -> None:
    model.eval()
    table = {row.name: row for row in layer_table(model, torch.zeros(shape))}
    height, width = shape[-2:]
    for name in names:
        row = table[name]
        out_h, out_w = row.output_shape[-2:]
        units = [(0, 0), (out_h // 2, out_w // 2), (out_h - 1, out_w - 1), (0, out_w - 1)]
        predicted = [row.field.box(*unit, height, width) for unit in units]
        assert predicted == measured_boxes(model, name, shape, units), name


def test_plain_stack_fields_match_gradients():
    _check(PlainStack(), (1, 3, 61, 45), ["conv1", "pool1", "conv2", "pool2", "conv3"])


def test_plain_stack_field_values_by_hand():
    model = PlainStack()
    field = receptive_field(model, "pool1", torch.zeros(1, 3, 61, 45))
    # conv1: size 5, jump 2, first -1; pool 3/2/1: size 5 + 2*2 = 9, jump 4, first -1 - 2 = -3
    assert field.size == (9, 9) and field.jump == (4, 4) and field.first == (-3, -3)
    assert field.start == (1.0, 1.0)


def test_resnet18_fields_match_gradients():
    _check(torchvision.models.resnet18(), (1, 3, 96, 96), ["maxpool", "layer1", "layer2.0.conv1"])


def test_resnet18_known_sizes():
    table = {
        r.name: r for r in layer_table(torchvision.models.resnet18(), torch.zeros(1, 3, 224, 224))
    }
    assert [table[n].field.size[0] for n in ("conv1", "layer1", "layer2", "layer3", "layer4")] == [
        7,
        43,
        99,
        211,
        435,
    ]
    assert table["avgpool"].field.is_global
    assert table["fc"].field is None


def test_default_model_fields_match_gradients(default_model):
    # TF "same" padding (asymmetric, via F.pad) makes the first unit start at pixel 0.
    _check(default_model.module, (1, 3, 96, 96), ["conv_stem", "blocks.1.0.conv_dw", "blocks.2"])


def test_receptive_field_of_non_spatial_layer_raises(default_model):
    from convlens.errors import LayerError

    with pytest.raises(LayerError, match="receptive field"):
        receptive_field(default_model.module, "classifier", torch.zeros(1, 3, 64, 64))
