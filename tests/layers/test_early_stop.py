"""run_until: the forward pass stops after the requested layers, hooks are removed."""

from __future__ import annotations

import torch
from tests.conftest import model_state
from tests.helpers.networks import small_convnet

from convlens.layers import capture
from convlens.layers.early_stop import run_until


def test_run_until_stops_after_the_layer_and_leaves_no_hook():
    model = small_convnet().eval()
    before = model_state(model)
    calls: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, n=n: calls.append(n)) for n, m in model.named_children()
    ]
    images = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), capture(model, "2") as cap:
        run_until(model, ["2"], images)
    for handle in handles:
        handle.remove()
    assert calls == ["0", "1", "2"]
    with torch.no_grad():
        full = model[2](model[1](model[0](images)))
    assert torch.equal(cap.activation("2"), full)
    assert model_state(model)["modules"] == before["modules"]
