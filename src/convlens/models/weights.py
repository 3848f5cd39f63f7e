"""A state_dict file loaded into a named architecture (``--arch NAME --weights FILE``)."""

from __future__ import annotations

from pathlib import Path

import torch

from convlens.errors import ModelLoadError
from convlens.models.loading import LoadedModel, load_model

SHOWN_KEYS = 3


def load_weights(arch: str, weights: str | Path) -> LoadedModel:
    """Build ``arch`` (``torchvision:NAME``, ``timm:NAME``, or any name `load_model` knows)
    with random weights and load the state_dict in ``weights`` into it, strictly.

    The file may hold the state_dict itself or a checkpoint dict with it under
    ``"state_dict"`` or ``"model"``; a ``"module."`` prefix on every key (DataParallel) is
    dropped. Missing or unexpected keys and shape mismatches raise `ModelLoadError` naming
    how many and the first few. The file is read with ``weights_only=True`` (no code runs).
    """
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"--weights {weights}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure: not a plain state_dict
        raise ModelLoadError(
            f"could not read {path} as a state_dict ({type(error).__name__}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from error
    state = _unwrap(state, path)
    loaded = load_model(arch, pretrained=False)
    _check_keys(loaded.module.state_dict(), state, arch, path)
    loaded.module.load_state_dict(state, strict=True)
    return LoadedModel(
        loaded.module.eval(), f"{arch}+{path.name}", loaded.preprocess, loaded.labels
    )


def _unwrap(state, path: Path) -> dict:
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(
            f"{path} holds no state_dict (a dict of tensors); for a whole pickled model use "
            "--model PATH instead of --weights"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _check_keys(expected: dict, given: dict, arch: str, path: Path) -> None:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            shown = ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")
            label = "mismatched shapes" if what == "shape" else f"{what} keys"
            problems.append(f"{len(keys)} {label} ({shown})")
    if problems:
        raise ModelLoadError(
            f"{path.name} does not fit {arch}: {'; '.join(problems)}. Check that --arch names "
            "the architecture the weights were trained with (and its number of classes)"
        )
