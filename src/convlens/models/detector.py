"""The synthetic-scenes detector ("synthetic-detector"): a tiny CenterNet-style detector
(Zhou et al. 2019, "Objects as Points") trained on `convlens.data.scenes`, whose boxes are
exact, so that where a detection's explanation lies can be checked (`convlens.detections`,
docs/detection.md). Shipped float16 weights, trained by `convlens.train.detector`
(``convlens train detector-model``).

Input: images ``Tensor[B, 3, 64, 64]`` in ``[0, 1]`` (as torchvision's detectors take; the
model normalises them itself, so its `Preprocess` has mean 0 and std 1). Output in every mode:
a list of B dicts, each with ``boxes`` ``Tensor[D, 4]`` (``(x0, y0, x1, y1)`` input pixels),
``labels`` ``LongTensor[D]`` (0..5, `SCENE_CLASSES`), ``scores`` ``Tensor[D]`` and
``class_scores`` ``Tensor[D, 6]`` (each class's heatmap probability at the detection's
centre), ``D <= max_detections`` detections sorted by decreasing score.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.scenes import SCENE_CLASSES
from convlens.errors import ModelLoadError
from convlens.models.loading import LoadedModel, register_model_source
from convlens.models.shapes import ShapesNet, shapes_preprocess

MODEL_NAME = "synthetic-detector"
SIZE = 64
WIDTH = 16
STRIDE = 4
SIZE_UNIT = 16.0  # box sides are SIZE_UNIT * exp(the size head's output) pixels
WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "synthetic_detector.pt"


def _conv(channels_in: int, channels_out: int, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    ]


class SceneDetector(nn.Module):
    """``backbone`` (`ShapesNet`'s conv stack, stride 4) -> ``neck`` (a dilated and a plain
    3x3 conv, 48 channels at 16x16 for 64 px inputs: the Grad-CAM layer, ``cam_layer``) ->
    three 1x1 heads: ``heatmap`` (one centre logit per class and cell), ``size`` (log box
    width and height) and ``offset`` (the centre's position inside its cell, through a
    sigmoid). `heads` returns their raw outputs (training); ``forward`` decodes them into
    detections: the cells that are the maximum of their 3x3 neighbourhood in a class's
    heatmap, the ``max_detections`` best over all classes with probability above
    ``score_threshold``. Every step after the peak choice is differentiable."""

    cam_layer = "neck"

    def __init__(
        self,
        num_classes: int = len(SCENE_CLASSES),
        width: int = WIDTH,
        max_detections: int = 10,
        score_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        channels = 3 * width
        self.backbone = ShapesNet(num_classes, width).features
        self.neck = nn.Sequential(*_conv(channels, channels, 2), *_conv(channels, channels))
        self.heatmap = nn.Conv2d(channels, num_classes, 1)
        self.size = nn.Conv2d(channels, 2, 1)
        self.offset = nn.Conv2d(channels, 2, 1)
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        nn.init.constant_(self.heatmap.bias, -2.19)  # prior 0.1, as CenterNet

    def heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(heatmap logits Tensor[B, C, h, w], log sizes Tensor[B, 2, h, w], offset logits
        Tensor[B, 2, h, w])`` for ``images`` in [0, 1]."""
        features = self.neck(self.backbone((images - 0.5) / 0.5))
        return self.heatmap(features), self.size(features), self.offset(features)

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        heat_logits, sizes, offsets = self.heads(images)
        heat = heat_logits.sigmoid()
        peaks = heat == F.max_pool2d(heat.detach(), 3, stride=1, padding=1)
        batch, classes, height, width = heat.shape
        found = []
        for row in range(batch):
            flat = torch.where(peaks[row], heat[row].detach(), -1).flatten()
            order = flat.argsort(descending=True)[: self.max_detections]
            order = order[flat[order] > self.score_threshold]
            label, cell = order // (height * width), order % (height * width)
            y, x = cell // width, cell % width
            centre_x = (x + offsets[row, 0, y, x].sigmoid()) * STRIDE
            centre_y = (y + offsets[row, 1, y, x].sigmoid()) * STRIDE
            box_w = SIZE_UNIT * sizes[row, 0, y, x].clamp(-4, 4).exp()
            box_h = SIZE_UNIT * sizes[row, 1, y, x].clamp(-4, 4).exp()
            boxes = torch.stack(
                [
                    centre_x - box_w / 2,
                    centre_y - box_h / 2,
                    centre_x + box_w / 2,
                    centre_y + box_h / 2,
                ],
                dim=1,
            )
            found.append(
                {
                    "boxes": boxes,
                    "labels": label,
                    "scores": heat[row, label, y, x],
                    "class_scores": heat[row][:, y, x].T,
                }
            )
        return found


def detector_preprocess(size: int = SIZE):
    """64 px stretch, pixels kept in [0, 1] (mean 0, std 1): the detector normalises itself."""
    return shapes_preprocess(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def load_detector_model(pretrained: bool = True, path: str | Path | None = None) -> LoadedModel:
    """The shipped `SceneDetector` as a `LoadedModel` named ``synthetic-detector`` (eval
    mode). ``pretrained=False``: the same architecture with random weights."""
    module = SceneDetector()
    if pretrained:
        file = Path(path) if path is not None else WEIGHTS_FILE
        if not file.is_file():
            raise ModelLoadError(
                f"the {MODEL_NAME} weights are missing ({file}); train them with "
                "'convlens train detector-model'"
            )
        saved = torch.load(file, map_location="cpu", weights_only=True)
        if "state_dict" not in saved:
            raise ModelLoadError(
                f"{file} lacks a state_dict; write it with convlens.train.detector"
            )
        module.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
    return LoadedModel(module.eval(), MODEL_NAME, detector_preprocess(), SCENE_CLASSES)


register_model_source(
    MODEL_NAME,
    "nothing (tiny CenterNet-style detector for the synthetic scenes; weights ship in convlens)",
    lambda _, pretrained: load_detector_model(pretrained),
)
