"""The CAM methods of issue 21 against pytorch-grad-cam (PyPI ``grad-cam``, in the ``dev``
extra) on a torchvision ResNet-18 with seeded random weights (no download), 64 px.

pytorch-grad-cam min-max scales each map (and FullGrad's every channel map) and resizes
with OpenCV, so its maps are compared with ours min-max scaled (`normalize_maps`).
Tolerances: 1e-4 where both resize nothing or the same way; 5e-3 (of a [0, 1] map) where
OpenCV's bilinear resize stands against torch's (``cv2.resize`` works in a fixed-point
pipeline for part of its arithmetic; both centre pixels the same way, the values differ
by up to ~2e-3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlens.attribution import cam as cams
from convlens.attribution.cam_variants import ablationcam, finercam
from convlens.attribution.common import layer_gradient, prepare
from convlens.attribution.fullgrad import fullgrad
from convlens.maps import normalize_maps

grad_cam = pytest.importorskip("pytorch_grad_cam")
torchvision = pytest.importorskip("torchvision")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

CLASSES = [3, 5]


@pytest.fixture(scope="module")
def resnet():
    """ResNet-18, 10 classes, seeded; BatchNorm statistics and affine terms randomised so
    that every BatchNorm offset (FullGrad's bias) is non-zero."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def reference(method, model, layers, images, classes=CLASSES, **call) -> torch.Tensor:
    targets = None if classes is None else [ClassifierOutputTarget(c) for c in classes]
    with method(model, layers) as explainer:
        return torch.from_numpy(np.asarray(explainer(images, targets, **call)))


def test_fullgrad_equals_pytorch_grad_cam(resnet, images):
    ours = normalize_maps(fullgrad(resnet, images, CLASSES))
    theirs = reference(grad_cam.FullGrad, resnet, [], images)
    assert float((ours - theirs).abs().max()) < 5e-3


@pytest.mark.slow
def test_ablationcam_equals_pytorch_grad_cam(resnet, images):
    """Layer ``layer1`` (64 channels, after a ReLU: pytorch-grad-cam then ablates to 0, as
    the paper does), one image: 64 ablated forward passes each."""
    ours = normalize_maps(ablationcam(resnet, images[:1], CLASSES[:1], layer="layer1"))
    with grad_cam.AblationCAM(resnet, [resnet.layer1], batch_size=64) as explainer:
        theirs = explainer(images[:1], [ClassifierOutputTarget(CLASSES[0])])
    assert float((ours - torch.from_numpy(theirs)).abs().max()) < 5e-3


def test_finercam_equals_pytorch_grad_cam(resnet, images):
    """Default targets on both sides: the top class against its three nearest."""
    ours = normalize_maps(finercam(resnet, images, layer="layer4"))
    theirs = reference(grad_cam.FinerCAM, resnet, [resnet.layer4], images, classes=None)
    assert float((ours - theirs).abs().max()) < 5e-3


def test_several_layers_equal_pytorch_grad_cam(resnet, images):
    """Tolerance 1e-2: pytorch-grad-cam min-max scales each layer's map at the layer's own
    resolution and then upsamples it; convlens scales the upsampled map (the one drawn), and
    bilinear upsampling lowers an interior maximum of layer3's 4x4 map by up to ~1%."""
    ours = normalize_maps(cams.gradcam(resnet, images, CLASSES, layer="layer4,layer3"))
    theirs = reference(grad_cam.GradCAM, resnet, [resnet.layer4, resnet.layer3], images)
    assert float((ours - theirs).abs().max()) < 1e-2


@pytest.mark.slow
def test_aug_smooth_equals_pytorch_grad_cam(resnet, images):
    """Input-sized maps: no resize on either side, so the averages agree to rounding."""
    ours = cams.gradcam(resnet, images, CLASSES, layer="layer4", aug_smooth=True)
    theirs = reference(grad_cam.GradCAM, resnet, [resnet.layer4], images, aug_smooth=True)
    assert float((ours - theirs).abs().max()) < 1e-4


def test_eigen_projection_equals_pytorch_grad_cam_up_to_its_sign(resnet, images):
    """Eigen-Grad-CAM and eigen_smooth project on the first principal component, whose sign
    SVD leaves open: pytorch-grad-cam keeps whatever sign numpy returns, ours agrees with
    the channel sum. So the projections agree up to sign per image."""
    prepared = prepare(resnet, images, CLASSES)
    activation, gradient, _ = layer_gradient(resnet, prepared.images, prepared.targets, "layer4")
    for weighted in (gradient * activation, cams.weigh_gradcam(activation, gradient)):
        ours = cams.first_component_map(weighted)
        theirs = torch.from_numpy(get_2d_projection(weighted.numpy()))
        same = (ours - theirs).abs().amax(dim=(1, 2))
        opposite = (ours + theirs).abs().amax(dim=(1, 2))
        assert float(torch.minimum(same, opposite).max()) < 1e-4 * float(theirs.abs().max())
    eigengrad = cams.eigengradcam(resnet, images, CLASSES, layer="layer4")
    expected = cams.to_input_size(cams.first_component_map(gradient * activation), images)
    assert torch.allclose(eigengrad, expected, atol=1e-6)
