"""capture / borrowed_model / resolve_layer / default_cam_layer."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.errors import LayerError
from convlens.layers import borrowed_model, capture, default_cam_layer, resolve_layer


class ReusedRelu(nn.Module):
    """One ReLU instance called twice, and an in-place ReLU right after conv1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.act_inplace = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2, 2, 1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        x = self.act_inplace(self.conv1(x))
        x = self.relu(self.conv2(self.relu(x)))
        return self.head(x.mean((2, 3)))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_exit_and_after_exception():
    model = ReusedRelu()
    with capture(model, ["conv1", "relu"]) as cap:
        model(torch.randn(1, 1, 5, 5))
        assert hook_count(model) == 2
    assert hook_count(model) == 0 and len(cap.all_calls("relu")) == 2
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, "conv1", gradients=True, graph_from_layer=True):
            raise RuntimeError("boom")
    assert hook_count(model) == 0
    assert torch.is_grad_enabled()


def test_grad_mode_restored_inside_no_grad():
    model = ReusedRelu()
    with torch.no_grad():
        with capture(model, "conv1", gradients=True):
            model(torch.randn(1, 1, 5, 5))
        assert not torch.is_grad_enabled()


def test_module_called_twice_records_both_calls_and_defaults_to_last():
    model = ReusedRelu()
    x = torch.randn(2, 1, 5, 5)
    with capture(model, "relu") as cap:
        model(x)
    first, last = cap.all_calls("relu")
    expected_first = torch.relu(torch.relu(model.conv1(x)))
    assert torch.allclose(first, expected_first)
    assert torch.allclose(last, torch.relu(model.conv2(expected_first)))
    assert cap.activation("relu") is last
    assert cap.activation("relu", call=0) is first


def test_inplace_relu_after_captured_layer_keeps_preactivation_and_gradient():
    model = ReusedRelu()
    x = torch.randn(1, 1, 5, 5)
    with capture(model, "conv1", gradients=True, graph_from_layer=True) as cap:
        out = model(x)
        activation = cap.activation("conv1")
        (grad,) = torch.autograd.grad(out[0, 1], activation)
    with torch.no_grad():
        pre = model.conv1(x)
    assert torch.allclose(activation.detach(), pre)
    assert (activation < 0).any()  # pre-activation values survived the in-place ReLU

    # Reference: the same score as a function of the conv1 output, by hand.
    leaf = pre.clone().requires_grad_()
    h = torch.relu(model.conv2(torch.relu(torch.relu(leaf))))
    score = model.head(h.mean((2, 3)))[0, 1]
    (expected,) = torch.autograd.grad(score, leaf)
    assert torch.allclose(grad, expected)


def test_graph_from_layer_equals_full_graph_and_leaves_no_param_grad():
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for from_layer in (True, False):
        with capture(model, "layer3", gradients=True, graph_from_layer=from_layer) as cap:
            out = model(x)
            (g,) = torch.autograd.grad(out[0, 2], cap.activation())
        grads.append(g)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_borrowed_model_restores_mixed_flags_after_exception():
    model = ReusedRelu().train()
    model.conv2.eval()
    with pytest.raises(ValueError):
        with borrowed_model(model):
            assert not any(m.training for m in model.modules())
            raise ValueError
    assert model.training and model.conv1.training and not model.conv2.training


def test_resolve_layer_by_name_index_module_and_errors():
    model = ReusedRelu()
    assert resolve_layer(model, "conv2") == ("conv2", model.conv2)
    assert resolve_layer(model, 0) == ("conv1", model.conv1)
    assert resolve_layer(model, -1) == ("head", model.head)
    assert resolve_layer(model, "#2")[0] == "conv2"
    assert resolve_layer(model, "#-1")[0] == "head"
    assert resolve_layer(model, model.relu)[0] == "relu"
    with pytest.raises(LayerError, match="did you mean conv2"):
        resolve_layer(model, "conv_2")
    with pytest.raises(LayerError, match="out of range"):
        resolve_layer(model, 10)
    with pytest.raises(LayerError, match="not part of the model"):
        resolve_layer(model, nn.ReLU())


def test_unused_layer_raises_clear_error():
    model = ReusedRelu()
    with capture(model, "head") as cap:
        pass
    with pytest.raises(LayerError, match="not called"):
        cap.activation()


def test_default_cam_layer():
    resnet = torchvision.models.resnet18()
    assert default_cam_layer(resnet, torch.zeros(1, 3, 64, 64)) == "layer4"
    with pytest.raises(LayerError, match="no layer with a spatial"):
        default_cam_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.zeros(1, 3, 2, 2))


def test_default_cam_layer_is_found_once_per_model_shape_and_structure():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    calls = []
    net.register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))
    assert default_cam_layer(net, torch.zeros(2, 3, 8, 8)) == "1"
    assert default_cam_layer(net, torch.ones(5, 3, 8, 8)) == "1"
    assert calls == [(1, 3, 8, 8)]  # one image, once
    # 3 x 3 input: the conv output is 1 x 1, so no layer is spatial at this size
    with pytest.raises(LayerError, match="no layer with a spatial"):
        default_cam_layer(net, torch.zeros(1, 3, 3, 3))
    net.append(nn.Unflatten(1, (4, 1, 1)))  # a structural change is looked at anew
    assert default_cam_layer(net, torch.zeros(1, 3, 8, 8)) == "1"
    assert len(calls) == 3


def test_default_cam_layer_of_default_model(default_model):
    # 64 px keeps bn2 spatial (2 x 2) and the test fast
    assert default_cam_layer(default_model.module, torch.zeros(1, 3, 64, 64)) == "bn2"


def test_capture_without_gradients_leaves_the_graph_intact():
    """Recording an activation must not cut autograd through the layer (input gradients
    stay those of the plain model) and must keep the pre-activation despite in-place ReLU."""
    model = ReusedRelu()
    x = torch.randn(1, 1, 5, 5, requires_grad=True)
    (expected,) = torch.autograd.grad(model(x)[0, 2], x)
    with capture(model, "conv1") as cap:
        (grad,) = torch.autograd.grad(model(x)[0, 2], x)
    assert torch.allclose(grad, expected)
    recorded = cap.activation()
    assert not recorded.requires_grad
    assert torch.allclose(recorded, model.conv1(x).detach()) and (recorded < 0).any()


def test_graph_from_layer_holds_for_every_forward_in_the_block():
    model = ReusedRelu()
    x = torch.randn(1, 1, 5, 5, requires_grad=True)
    with capture(model, "conv2", gradients=True, graph_from_layer=True) as cap:
        for _ in range(2):
            out = model(x)
            (to_input,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
            assert to_input is None  # nothing before conv2 was recorded
            (to_layer,) = torch.autograd.grad(out[0, 0], cap.activation())
            assert to_layer.abs().sum() > 0
    assert len(cap.all_calls()) == 2


def test_grad_mode_restored_after_exception_inside_no_grad():
    model = ReusedRelu()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="boom"):
            with capture(model, "conv1", gradients=True):
                model(torch.randn(1, 1, 5, 5))
                raise RuntimeError("boom")
        assert not torch.is_grad_enabled()
    assert hook_count(model) == 0


def test_digit_names_of_sequential_children_win_over_indices():
    inner = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
    model = nn.Sequential(inner, nn.Conv2d(1, 1, 1))
    # named_layers: "0", "0.0", "0.1", "1" -> index 1 would be "0.0"
    assert resolve_layer(model, "1") == ("1", model[1])
    assert resolve_layer(model, 1) == ("0.0", inner[0])
    assert resolve_layer(model, "#3") == ("1", model[1])  # the explicit index form
    # A digit string is a name only: no layer named "3" is an error, not a silent index.
    with pytest.raises(LayerError, match=r"no layer named '3'.*write '#3'.*int 3"):
        resolve_layer(model, "3")
    with pytest.raises(LayerError, match="out of range"):
        resolve_layer(model, "#4")
    for bad in ("#", "#x", "#1.5", "#--1", "# 1"):
        with pytest.raises(LayerError, match="not a layer index"):
            resolve_layer(model, bad)
    with pytest.raises(LayerError, match="not a float"):
        resolve_layer(model, 1.0)


def test_activation_of_a_layer_not_captured_or_a_call_that_did_not_happen_names_the_fix():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with capture(net, "0") as cap:
        net(torch.rand(1, 3, 8, 8))
    assert cap.activation("0", call=0) is cap.activation("0", call=-1)
    with pytest.raises(LayerError, match=r"'2' is not captured here \(captured: 0\)"):
        cap.activation("2")  # it ran, but nobody asked for it
    with pytest.raises(LayerError, match=r"ran 1 time\(s\).* got 1"):
        cap.activation("0", call=1)


def test_the_layer_functions_take_a_loaded_model_as_they_take_its_module():
    from convlens.layers import layer_table
    from convlens.models.loading import LoadedModel

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    loaded, images = LoadedModel(net, "tiny"), torch.rand(1, 3, 8, 8)
    assert resolve_layer(loaded, "#2") == resolve_layer(net, "#2")
    assert default_cam_layer(loaded, images) == default_cam_layer(net, images)
    assert layer_table(loaded, images) == layer_table(net, images)
    with capture(loaded, "2") as cap:
        net(images)
    assert cap.activation("2").shape == (1, 4, 4, 4)
