"""The synthetic-shapes benchmark model: its architecture and the shipped weights (trained by
`convlens.train.synthetic`, run as ``convlens train shapes-model``).

`ShapesNet` is the benchmark model of `convlens evaluate`: a plain conv stack, global average
pooling (GAP) and one linear layer, the architecture the CAM paper (Zhou et al., 2016,
"Learning Deep Features for Discriminative Localization") needs: the class score is
``y_c = sum_k w_ck * mean_xy A_k(x, y) + b_c``, so ``CAM_c(x, y) = sum_k w_ck A_k(x, y)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from convlens.data.preprocess import Preprocess
from convlens.data.synthetic import SHAPES
from convlens.errors import ModelLoadError
from convlens.models.loading import LoadedModel, register_model_source


def _conv_block(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    ]


class ShapesNet(nn.Module):
    """conv(3->16) pool conv(16->32) conv(32->32) pool conv(32->48) conv(48->48) -> GAP -> linear.

    Input ``Tensor[B, 3, H, W]`` (any H, W; trained at 64x64, normalised with mean 0.5 and
    std 0.5). ``features`` ends at ``H/4 x W/4`` (16x16 for 64x64 inputs), the layer CAM
    methods use by default. Output: logits ``Tensor[B, num_classes]``. 49,462 parameters with
    the defaults (6 classes, width 16).
    """

    def __init__(self, num_classes: int = 6, width: int = 16) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 3 * width
        self.features = nn.Sequential(
            *_conv_block(3, c1),
            nn.MaxPool2d(2),
            *_conv_block(c1, c2),
            *_conv_block(c2, c2),
            nn.MaxPool2d(2),
            *_conv_block(c2, c3),
            *_conv_block(c3, c3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))


MODEL_NAME = "synthetic-shapes"
SIZE = 64
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "synthetic_shapes.pt"


def shapes_preprocess(size: int = SIZE, mean=MEAN, std=STD):
    """The `Preprocess` of the shapes model: ``size x size`` stretch, ``mean``/``std``
    (defaults: the training settings, 64 px and 0.5/0.5)."""
    return Preprocess(
        size=int(size),
        mode="stretch",
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        interpolation="bilinear",
    )


def load_shapes_model(pretrained: bool = True, path: str | Path | None = None):
    """The shipped `ShapesNet` as a `LoadedModel` named ``synthetic-shapes`` (eval mode),
    with the class names, input size and normalisation saved in the weights file.

    ``pretrained=False`` gives the same architecture with random weights and the training
    settings (`SHAPES`, `SIZE`, `MEAN`, `STD`).
    """
    if not pretrained:
        module = ShapesNet(num_classes=len(SHAPES))
        return LoadedModel(module.eval(), MODEL_NAME, shapes_preprocess(), SHAPES)
    file = Path(path) if path is not None else WEIGHTS_FILE
    writer = "convlens.train.synthetic.save_shapes_model"
    return load_shapes_net_file(file, MODEL_NAME, writer, "convlens train shapes-model")


def load_shapes_net_file(
    file: Path, name: str, writer: str, trainer: str, keys: tuple[str, ...] = ()
) -> LoadedModel:
    """A `ShapesNet` weights file (`convlens.train.loop.save_weights`: float16 state, class
    names, input size, mean, std, and ``width`` when it is not 16) as a `LoadedModel` named
    ``name`` in eval mode. ``keys``: entries the file must hold beyond those. A missing file
    names the ``trainer`` command; a file without the entries names ``writer``."""
    if not file.is_file():
        raise ModelLoadError(
            f"the {name} weights are missing ({file}); train them with '{trainer}'"
        )
    saved = torch.load(file, map_location="cpu", weights_only=True)
    required = ("state_dict", "classes", "size", "mean", "std", *keys)
    missing = [k for k in required if k not in saved]
    if missing:
        raise ModelLoadError(f"{file} lacks {missing}; write the weights with {writer}")
    classes = tuple(str(label) for label in saved["classes"])
    module = ShapesNet(num_classes=len(classes), width=int(saved.get("width", 16)))
    module.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
    preprocess = shapes_preprocess(saved["size"], saved["mean"], saved["std"])
    return LoadedModel(module.eval(), name, preprocess, classes)


register_model_source(
    MODEL_NAME,
    "nothing (small GAP CNN for the synthetic shapes benchmark; weights ship in convlens)",
    lambda _, pretrained: load_shapes_model(pretrained),
)
