"""borrowed_model: private copies of positional and keyword tensors, flags restored."""

from __future__ import annotations

import torch
from torch import nn

from convlens.layers import borrowed_model


class EditsItsInputs(nn.Module):
    """Scales its positional input and its keyword ``offset`` in place, then adds them."""

    def forward(self, x: torch.Tensor, *, offset: torch.Tensor, scale: float = 2.0):
        x.mul_(scale)
        offset.mul_(scale)
        return x + offset


def test_keyword_tensors_are_copied_like_positional_ones():
    model = EditsItsInputs()
    x, offset = torch.ones(3), torch.full((3,), 5.0)
    with borrowed_model(model):
        first = model(x, offset=offset, scale=3.0)
        second = model(x, offset=offset, scale=3.0)  # a method's next pass sees the same input
    assert torch.equal(x, torch.ones(3)) and torch.equal(offset, torch.full((3,), 5.0))
    assert torch.equal(first, torch.full((3,), 18.0)) and torch.equal(second, first)
    assert not model._forward_pre_hooks  # the hook is gone after the block


def test_keyword_copies_pass_gradients_to_the_callers_leaf():
    model = EditsItsInputs()
    x = torch.ones(2, requires_grad=True)
    offset = torch.ones(2, requires_grad=True)  # in-place on a leaf would fail unborrowed
    with borrowed_model(model):
        gx, goffset = torch.autograd.grad(model(x, offset=offset).sum(), (x, offset))
    assert torch.equal(gx, torch.full((2,), 2.0)) and torch.equal(goffset, torch.full((2,), 2.0))
    assert x.grad is None and offset.grad is None


def test_copy_inputs_false_hands_the_tensors_over_as_they_are():
    model = EditsItsInputs().train()
    x, offset = torch.ones(3), torch.full((3,), 5.0)
    with borrowed_model(model, copy_inputs=False):
        assert not model.training and not model._forward_pre_hooks
        out = model(x, offset=offset)
    assert torch.equal(out, torch.full((3,), 12.0))
    assert torch.equal(x, torch.full((3,), 2.0))  # the caller's own throwaway, edited
    assert model.training and not model._forward_hooks  # flags and hooks given back
