"""Inside torch.inference_mode() gradient methods refuse with a convlens error naming the
way out; methods that need no gradient run and give the usual maps."""

from __future__ import annotations

import pytest
import torch
from tests.helpers.methods import SMALL
from tests.helpers.networks import small_convnet

from convlens.attribution.explain import explain
from convlens.attribution.methods import list_methods
from convlens.errors import MethodError
from convlens.features.objectives import channel
from convlens.features.optimize import visualize
from convlens.features.projection import project_unit

NO_GRADIENT = {
    "cam",
    "eigencam",
    "scorecam",
    "ablationcam",
    "occlusion",
    "rise",
    "superpixel_ablation",
    "kernel_shap",
    "lime",
}


@pytest.mark.usefixtures("one_thread")
def test_every_method_refuses_or_runs_under_inference_mode(unchanged):
    net, images = small_convnet(), torch.randn(2, 3, 8, 8)
    with unchanged(net, images):
        for info in list_methods():
            options = SMALL.get(info.name, {})
            if info.name in NO_GRADIENT:
                with torch.inference_mode():
                    inside = explain(net, images, info.name, **options).maps
                outside = explain(net, images, info.name, **options).maps
                torch.testing.assert_close(inside, outside, msg=info.name)
                continue
            with pytest.raises(MethodError, match=r"inference_mode\(\) turns off.*outside"):
                with torch.inference_mode():
                    explain(net, images, info.name, **options)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_feature_gradients_refuse_under_inference_mode():
    net = small_convnet()
    with torch.inference_mode():
        with pytest.raises(MethodError, match="project_unit needs gradients"):
            project_unit(net, torch.randn(3, 8, 8), "3", 0)
        with pytest.raises(MethodError, match="visualize needs gradients"):
            visualize(net, channel("3", 0), steps=1, size=8, transforms=None)
        with torch.inference_mode(False):  # the way out the message names
            assert project_unit(net, torch.randn(3, 8, 8), "3", 0).projection.shape == (3, 8, 8)
