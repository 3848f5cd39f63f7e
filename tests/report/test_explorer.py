"""The notebook explorer's logic without a browser: each choice explains what `explain`
would, the layer control is off for methods without a layer, and a missing ipywidgets is
a ConvlensError naming the extra."""

from __future__ import annotations

import sys

import pytest
import torch
from tests.helpers.networks import small_convnet

from convlens import explain
from convlens.errors import ConvlensError
from convlens.report.explorer import ExplorerState, ExplorerView, explorer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_choices_explain_like_explain_and_layer_control():
    model, images = small_convnet(), torch.randn(2, 3, 16, 16)
    state = ExplorerState(model, images, methods=["saliency", "gradcam"])
    chosen = state.choose(image=1, method="gradcam", layer="3", target=2)
    expected = explain(model, images[1:], "gradcam", target=2, layer="3")
    torch.testing.assert_close(chosen.maps, expected.maps)
    assert state.layer_options()[0] == "(default)" and "4" in state.layer_options()
    assert [value for _, value in state.class_options()][0] == "top1"

    class Control:
        value, options, disabled = None, (), False

    controls = {name: Control() for name in ("image", "method", "layer", "target")}
    view, message = Control(), Control()
    callback = ExplorerView(state, controls, view, message)
    callback("method", "saliency")
    assert controls["layer"].disabled and view.value[:4] == b"\x89PNG"
    callback("method", "nonsense")
    assert "unknown method" in message.value


def test_missing_ipywidgets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ConvlensError, match=r"convlens\[notebook\]"):
        explorer(small_convnet(), torch.randn(1, 3, 16, 16))
