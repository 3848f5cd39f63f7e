"""The planted-shortcut models ``shortcut-0.0``, ``shortcut-0.5``, ``shortcut-0.9`` and
``shortcut-1.0``: the multi-label `ShapesNet` of ``synthetic-scenes`` fine-tuned on
`convlens.data.shortcuts` scenes in which a 6x6 checkerboard cue co-occurs with "triangle" at
that rate (trained by `convlens.train.shortcuts`, run as ``convlens train shortcut-model``).

Each weights file stores, beside the float16 weights, a ``record`` with the ``rate``, the
``seed``, the ``command`` that remakes it and the measured ``reliance`` on the cue (mean drop
of the triangle logit when the cue is removed, on held-out scenes carrying it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from convlens.errors import ModelLoadError
from convlens.models.loading import LoadedModel, register_model_source
from convlens.models.scenes import load_scenes_model
from convlens.models.shapes import load_shapes_net_file

SHORTCUT_RATES = (0.0, 0.5, 0.9, 1.0)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shortcut_model_name(rate: float) -> str:
    """``shortcut-R`` with ``R`` to one decimal (``shortcut-0.9``)."""
    return f"shortcut-{float(rate):.1f}"


def shortcut_weights_file(rate: float, folder: str | Path | None = None) -> Path:
    """``FOLDER/shortcut_R.pt`` (default folder: the shipped weights)."""
    return Path(folder or WEIGHTS_DIR) / f"shortcut_{float(rate):.1f}.pt"


def shortcut_command(
    rate: float, train: int, epochs: int, test: int, seed: int, learning_rate: float
) -> str:
    """The command line that trains the model of ``rate`` with these settings."""
    return (
        f"convlens train shortcut-model --rate {float(rate):.1f} --train {train} "
        f"--epochs {epochs} --test {test} --seed {seed} --lr {learning_rate:g}"
    )


def load_shortcut_model(rate: float, path: str | Path | None = None) -> LoadedModel:
    """The shipped shortcut model of ``rate`` (one of `SHORTCUT_RATES`, or any file with
    ``path``) as a `LoadedModel` named ``shortcut-R`` in eval mode."""
    file = Path(path) if path is not None else _shipped(rate)
    writer = "convlens.train.shortcuts.save_shortcut_model"
    trainer = f"convlens train shortcut-model --rate {float(rate):.1f}"
    return load_shapes_net_file(file, shortcut_model_name(rate), writer, trainer, ("record",))


def shortcut_record(rate: float, path: str | Path | None = None) -> dict:
    """The ``record`` stored in the weights file of ``rate``: ``reliance``, ``rate``,
    ``seed``, ``command`` and the training settings."""
    file = Path(path) if path is not None else _shipped(rate)
    if not file.is_file():
        raise ModelLoadError(
            f"the {shortcut_model_name(rate)} weights are missing ({file}); train them with "
            f"'convlens train shortcut-model --rate {float(rate):.1f}'"
        )
    return dict(torch.load(file, map_location="cpu", weights_only=True).get("record", {}))


def _shipped(rate: float) -> Path:
    if float(rate) not in SHORTCUT_RATES:
        raise ModelLoadError(
            f"no shipped shortcut model for rate {rate}; use one of "
            f"{', '.join(f'{r:.1f}' for r in SHORTCUT_RATES)} or pass the file's path"
        )
    return shortcut_weights_file(rate)


def _register(rate: float) -> None:
    register_model_source(
        shortcut_model_name(rate),
        f"nothing (synthetic-scenes fine-tuned with a planted cue at rate {rate:.1f}; "
        "weights ship in convlens)",
        lambda _, pretrained: _load_registered(rate, pretrained),
    )


def _load_registered(rate: float, pretrained: bool) -> LoadedModel:
    if pretrained:
        return load_shortcut_model(rate)
    random = load_scenes_model(pretrained=False)
    return LoadedModel(random.module, shortcut_model_name(rate), random.preprocess, random.labels)


for _rate in SHORTCUT_RATES:
    _register(_rate)
