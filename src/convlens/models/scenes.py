"""The multi-object benchmark model ("synthetic-scenes"): `ShapesNet` trained multi-label
(one sigmoid per class) on `convlens.data.scenes`, with shipped float16 weights (trained by
`convlens.train.scenes`, run as ``convlens train scenes-model``).

Its outputs are LOGITS ``Tensor[B, 6]``; ``sigmoid(logit_c)`` is the probability that class
``c`` is present, independently of the other classes (several shapes share an image). Explain
a present class by its logit, as for any model; faithfulness curves on this model track
``sigmoid(logit_c)`` (score ``"sigmoid"``), not a softmax across classes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from convlens.data.scenes import SCENE_CLASSES
from convlens.models.loading import LoadedModel, register_model_source
from convlens.models.shapes import ShapesNet, load_shapes_net_file, shapes_preprocess

MODEL_NAME = "synthetic-scenes"
SIZE = 64
WIDTH = 16
WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "synthetic_scenes.pt"


def load_scenes_model(pretrained: bool = True, path: str | Path | None = None) -> LoadedModel:
    """The shipped multi-label `ShapesNet` as a `LoadedModel` named ``synthetic-scenes``
    (eval mode), with the classes, width, input size and normalisation of the weights file.
    ``pretrained=False``: the same architecture, random weights."""
    if not pretrained:
        module = ShapesNet(num_classes=len(SCENE_CLASSES), width=WIDTH)
        return LoadedModel(module.eval(), MODEL_NAME, shapes_preprocess(SIZE), SCENE_CLASSES)
    file = Path(path) if path is not None else WEIGHTS_FILE
    writer = "convlens.train.scenes.save_scenes_model"
    trainer = "convlens train scenes-model"
    return load_shapes_net_file(file, MODEL_NAME, writer, trainer, ("width",))


def scenes_record(path: str | Path | None = None) -> dict:
    """The training record stored in the weights file (held-out mAP, accuracy, settings)."""
    file = Path(path) if path is not None else WEIGHTS_FILE
    return dict(torch.load(file, map_location="cpu", weights_only=True).get("record", {}))


register_model_source(
    MODEL_NAME,
    "nothing (multi-label GAP CNN for the multi-object shapes benchmark; weights ship in convlens)",
    lambda _, pretrained: load_scenes_model(pretrained),
)
