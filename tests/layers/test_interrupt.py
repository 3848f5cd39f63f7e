"""stop_between_passes: raises before the pass after the request, leaves nothing behind."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import assert_same_state, model_state
from tests.helpers.networks import small_convnet

from convlens.layers.interrupt import Interrupted, stop_between_passes


def test_stops_before_the_next_pass_and_removes_its_hook():
    model = small_convnet().eval()  # direct calls: no batch-norm statistics to update
    before = model_state(model)
    passes = []
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(Interrupted, match="stopped on request"):
        with stop_between_passes(model, lambda: len(passes) >= 2):
            for _ in range(5):
                model(x)
                passes.append(1)
    assert len(passes) == 2
    assert_same_state(before, model_state(model))


def test_runs_to_the_end_when_never_asked():
    model = small_convnet().eval()
    x = torch.rand(1, 3, 8, 8)
    with stop_between_passes(model, lambda: False):
        first = model(x)
    assert torch.equal(first, model(x))
    assert not model._forward_pre_hooks


def test_a_cancelled_method_gives_the_model_back():
    from convlens import explain

    model = small_convnet().train()
    before = model_state(model)
    x = torch.rand(1, 3, 16, 16)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Interrupted):
        with stop_between_passes(model, stop):
            explain(model, x, "occlusion", patch=4, stride=2, batch_size=2)
    assert_same_state(before, model_state(model))
