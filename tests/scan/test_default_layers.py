"""The layers a scan covers when none is named: a few representative stages, not all."""

from __future__ import annotations

import pytest
import torch

from convlens.features.activations import stage_layers
from convlens.models import load_model
from convlens.scan.topk import representative_stages, top_activating

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("stages", "chosen"),
    [
        (["a", "b"], ["a", "b"]),
        (["a", "b", "c"], ["a", "b", "c"]),
        (["a", "b", "c", "d"], ["a", "c", "d"]),  # too few to leave out the stem and head
        (["stem", "b", "c", "d", "head"], ["b", "c", "d"]),
        ([f"s{i}" for i in range(12)], ["s2", "s6", "s9"]),
    ],
)
def test_middle_stage_of_each_third(stages, chosen):
    assert representative_stages(stages) == chosen


def test_default_model_scans_three_stages_without_the_head(default_model):
    stages = stage_layers(default_model, torch.zeros(3, 224, 224))
    assert stages[-1] == "bn2"
    assert representative_stages(stages) == ["blocks.1", "blocks.3", "blocks.5"]


def test_top_activating_defaults_to_representative_stages():
    loaded = load_model("synthetic-shapes")
    result = top_activating(loaded, "shapes:2", k=1, projections=())
    stages = stage_layers(loaded, torch.zeros(3, 64, 64))
    assert len(stages) == 5
    assert list(result.layers) == representative_stages(stages) == stages[1:-1]
