"""Shared fixtures: deterministic seeds, tiny networks, the default model (loaded once)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def default_model():
    """The embedded EfficientNet-Lite0 (LoadedModel). Tests must not modify it."""
    from convlens import load_model

    return load_model()
