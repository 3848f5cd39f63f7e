"""The shipped planted-shortcut models: loadable by name, with the rate, seed, command and the
measured reliance on the cue stored in each file, and that reliance rising with the rate."""

import pytest
import torch

from convlens.errors import ModelLoadError
from convlens.models import load_model
from convlens.models.shortcuts import (
    SHORTCUT_RATES,
    load_shortcut_model,
    shortcut_model_name,
    shortcut_record,
    shortcut_weights_file,
)


def test_stored_reliance_increases_with_the_training_rate():
    records = [shortcut_record(rate) for rate in SHORTCUT_RATES]
    for rate, record in zip(SHORTCUT_RATES, records, strict=True):
        assert record["rate"] == rate and record["seed"] == 0
        assert record["command"].startswith(f"convlens train shortcut-model --rate {rate:.1f}")
        file = shortcut_weights_file(rate)
        saved = torch.load(file, map_location="cpu", weights_only=True)
        assert saved["state_dict"]["classifier.weight"].dtype == torch.float16
        assert file.stat().st_size < 150_000  # small, like the scenes model
    reliance = [record["reliance"] for record in records]
    assert reliance == sorted(reliance) and len(set(reliance)) == len(reliance), reliance
    assert reliance[-1] > 1.0  # the rate-1.0 model leans on the cue by more than a logit


def test_models_load_by_name():
    loaded = load_model("shortcut-0.9")
    assert loaded.name == shortcut_model_name(0.9) == "shortcut-0.9"
    assert loaded.labels[2] == "triangle" and loaded.preprocess.height_width == (64, 64)
    with pytest.raises(ModelLoadError, match="rate"):
        load_shortcut_model(0.3)


@pytest.mark.slow
def test_reliance_remeasured_on_a_few_held_out_scenes(unchanged):
    from convlens.train.shortcuts import cue_reliance

    loaded = load_shortcut_model(1.0)
    with unchanged(loaded.module):
        measured = cue_reliance(loaded.module, loaded.preprocess, test=24)
    stored = shortcut_record(1.0)["reliance"]  # measured on 600 scenes
    assert measured["cue_scenes"] > 5
    assert measured["reliance"] > shortcut_record(0.0)["reliance"] + 0.5
    assert abs(measured["reliance"] - stored) < 0.5 * stored
