"""Token-grid and channels-last layers (ViT, DeiT, Swin) as [B, C, h, w] maps; TorchScript
models refused before any hook is attempted."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.conftest import assert_same_state, model_state
from tests.helpers.networks import small_convnet
from torch import nn

from convlens.errors import LayerError
from convlens.layers import capture, default_cam_layer
from convlens.layers.tokens import channels_last, register_reshape, token_grid


class TinyTokens(nn.Module):
    """A 2-token-prefix "transformer" on a 3x2 patch grid: patches of 4x4 pixels to 5
    channels, a mixing linear layer per token, class token read out."""

    num_prefix_tokens = 2
    embed_dim = 5

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.patch = nn.Conv2d(3, 5, 4, stride=4)
        self.patch.grid_size = (3, 2)
        self.prefix = nn.Parameter(torch.randn(1, 2, 5))
        self.block = nn.Linear(5, 5)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # [B, 6, 5]
        tokens = torch.cat([self.prefix.expand(len(x), -1, -1), tokens], 1)
        tokens = self.block(tokens)  # the layer explained: [B, 8, 5]
        tokens = self.mix(tokens.transpose(1, 2)).transpose(1, 2)  # mixes tokens
        return self.head(tokens[:, 0])


def test_token_grid_and_channels_last_are_exact_layouts():
    tokens = torch.arange(2 * 8 * 5.0).view(2, 8, 5)
    grid = token_grid(tokens, prefix=2, height=3, width=2)
    assert grid.shape == (2, 5, 3, 2)
    assert torch.equal(grid[1, 4, 2, 1], tokens[1, 2 + 2 * 2 + 1, 4])
    nhwc = torch.randn(2, 3, 4, 6)
    assert torch.equal(channels_last(nhwc)[:, :, 1, 2], nhwc[:, 1, 2, :])
    with pytest.raises(LayerError, match="reshape="):
        token_grid(tokens, prefix=1, height=3, width=2)


def test_gradcam_on_token_layer_equals_hand_computed_grid(unchanged):
    from convlens import explain
    from convlens.maps import resize_maps

    model, images = TinyTokens().eval(), torch.randn(2, 3, 12, 8)
    with unchanged(model, images):
        result = explain(model, images, method="gradcam", target=1, layer="block")
    # By hand: the block's tokens, their gradient, patch tokens laid on the 3x2 grid.
    kept = {}
    handle = model.block.register_forward_hook(lambda m, i, o: kept.setdefault("o", o))
    try:
        out = model(images)
        (grad,) = torch.autograd.grad(out[:, 1].sum(), kept["o"])
    finally:
        handle.remove()
    activation = kept["o"][:, 2:].detach().transpose(1, 2).reshape(2, 5, 3, 2)
    gradient = grad[:, 2:].transpose(1, 2).reshape(2, 5, 3, 2)
    coarse = (gradient.mean((2, 3))[:, :, None, None] * activation).sum(1).clamp_min(0)
    torch.testing.assert_close(result.maps, resize_maps(coarse, (12, 8)))


def test_default_layer_of_token_model_is_a_grid_that_reaches_the_output():
    model = TinyTokens().eval()
    # "mix" mixes tokens into the class token; the head reads only the class token, so the
    # last layer whose patch positions matter is the block before the mixing.
    assert default_cam_layer(model, torch.randn(1, 3, 12, 8)) == "block"
    with capture(model, "block") as cap:
        model(torch.randn(1, 3, 12, 8))
    assert cap.activation().shape == (1, 5, 3, 2)


def test_registered_and_given_reshape_for_a_custom_layout():
    model = small_convnet().eval()
    swap = lambda out: out.transpose(2, 3)  # noqa: E731  (any element permutation)
    images = torch.randn(1, 3, 6, 5)
    with capture(model, "3", reshape=swap, gradients=True) as cap:
        score = model(images)[:, 0].sum()
        (grad,) = torch.autograd.grad(score, cap.activation())
    with capture(model, "3", gradients=True, reshape=None) as plain:
        score = model(images)[:, 0].sum()
        (plain_grad,) = torch.autograd.grad(score, plain.activation())
    assert cap.activation().shape == (1, 4, 5, 6)
    torch.testing.assert_close(grad, plain_grad.transpose(2, 3))
    register_reshape(model[3], swap)
    try:
        with capture(model, "3") as auto:
            model(images)
        assert auto.activation().shape == (1, 4, 5, 6)
    finally:
        register_reshape(model[3], None)


@pytest.mark.slow
def test_vit_tiny_gradcam_uses_the_14x14_patch_grid():
    timm = pytest.importorskip("timm")
    from convlens import explain

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    image = torch.randn(1, 3, 224, 224)
    before = model_state(model)
    layer = default_cam_layer(model, image)
    assert layer == "blocks.11.norm1"  # not a 4-D attention output such as attn.k_norm
    with capture(model, layer) as cap:
        model(image)
    assert cap.activation().shape == (1, 192, 14, 14)
    result = explain(model, image, method="gradcam")
    assert result.layer == layer and result.maps.shape == (1, 224, 224)
    assert float(result.maps.max()) > 0
    from convlens.maps import resize_maps

    # The map is Grad-CAM of the 196 patch tokens laid on the 14x14 grid (class token
    # dropped), upsampled: computed here by hand from the block's token output.
    kept = {}
    handle = model.blocks[11].norm1.register_forward_hook(lambda m, i, o: kept.setdefault("o", o))
    try:
        out = model(image)
        (grad,) = torch.autograd.grad(out.max(1).values.sum(), kept["o"])
    finally:
        handle.remove()
    activation = kept["o"][:, 1:].detach().transpose(1, 2).reshape(1, 192, 14, 14)
    gradient = grad[:, 1:].transpose(1, 2).reshape(1, 192, 14, 14)
    coarse = (gradient.mean((2, 3))[:, :, None, None] * activation).sum(1).clamp_min(0)
    torch.testing.assert_close(result.maps, resize_maps(coarse, (224, 224)))
    assert_same_state(before, model_state(model))


def test_torchscript_model_is_refused_before_any_hook():
    from convlens import explain

    model = small_convnet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    with pytest.raises(LayerError, match="TorchScript.*eager model.*saliency"):
        explain(scripted, torch.randn(1, 3, 8, 8), method="gradcam")
    with pytest.raises(LayerError, match="TorchScript"):
        with capture(scripted, "0"):
            pass
    saliency = explain(scripted, torch.randn(1, 3, 8, 8), method="saliency")
    assert saliency.maps.shape == (1, 8, 8)
