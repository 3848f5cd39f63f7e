"""Shared attribution steps: chunk sizes, option checks, and models that edit their input."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.methods import SMALL as SMALL_OPTIONS
from torch import nn

from convlens.attribution.common import MIN_CHUNK, chunk_size, positive_int
from convlens.attribution.methods import list_methods
from convlens.errors import MethodError

# Net's classes 0 and 2 trail their nearest rivals, so FinerCAM's map is 0 for them;
# alpha=0 explains y_c itself and keeps a non-zero map to compare.
SMALL = SMALL_OPTIONS | {"finercam": {"alpha": 0.0}}


class Net(nn.Module):
    """Subtracts 0.5 from its input (in place or not), then conv -> ReLU -> GAP -> linear."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = x.sub_(0.5) if self.in_place else x - 0.5
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def test_chunk_size_defaults_to_the_batch_but_at_least_min_chunk():
    assert chunk_size(None, 1) == MIN_CHUNK
    assert chunk_size(None, 3 * MIN_CHUNK) == 3 * MIN_CHUNK
    assert chunk_size(5, 100) == 5
    for bad in (0, -1, 2.0, True, "8"):
        with pytest.raises(MethodError, match="batch_size must be a positive integer"):
            chunk_size(bad, 4)


def test_positive_int_names_the_option():
    assert positive_int("n_steps", 3) == 3
    with pytest.raises(MethodError, match="n_steps must be a positive integer, got 0"):
        positive_int("n_steps", 0)


@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_model_editing_its_input_in_place(method):
    """The caller's tensor is left alone, and every forward pass sees the caller's values,
    so the maps equal those of the same network written without the in-place edit."""
    torch.manual_seed(3)
    editing = Net(in_place=True).eval()
    plain = Net(in_place=False).eval()
    plain.load_state_dict(editing.state_dict())
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    saved = images.clone()
    info = next(m for m in list_methods() if m.name == method)
    options = {"layer": "act"} if info.uses_layer else {}
    options |= SMALL.get(method, {})
    got = info.fn(editing, images, [0, 2], **options)
    expected = info.fn(plain, images, [0, 2], **options)
    got, expected = (r[0] if isinstance(r, tuple) else r for r in (got, expected))
    assert torch.equal(images, saved)
    assert torch.allclose(got, expected, atol=1e-6)
    assert float(expected.abs().amax()) > 0


class Failing(Net):
    """`Net` that raises inside its forward pass on call number ``fail_on`` (1-based)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__(in_place=False)
        self.fail_on, self.calls = fail_on, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")
        return super().forward(x)


@pytest.mark.parametrize("fail_on", [1, 2])
@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_state_restored_when_the_forward_pass_raises(method, fail_on, unchanged):
    """Hooks, rules, eval mode and grad mode are given back when the model itself fails,
    on the first forward pass or a later one (perturbed copies, path points, masks)."""
    torch.manual_seed(3)
    net = Failing(fail_on).train()
    info = next(m for m in list_methods() if m.name == method)
    options = ({"layer": "act"} if info.uses_layer else {}) | SMALL.get(method, {})
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    grad_mode = torch.is_grad_enabled()
    with unchanged(net, images):
        try:
            info.fn(net, images, "top1", **options)
        except RuntimeError as error:
            assert "boom" in str(error)
        else:
            assert net.calls < fail_on, "the model ran past the failing call without raising"
    assert net.training and net.act.training
    assert torch.is_grad_enabled() == grad_mode
    assert_plain_relu_gradient()


def assert_plain_relu_gradient() -> None:
    """No backward rule is left active: a negative upstream gradient passes through relu."""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (gradient,) = torch.autograd.grad((torch.relu(x) * torch.tensor([-1.0, 1.0])).sum(), x)
    assert gradient.tolist() == [-1.0, 1.0]
