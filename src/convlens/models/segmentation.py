"""A DeepLabv3+-style segmentation network (Chen et al. 2018, "Encoder-Decoder with Atrous
Separable Convolution for Semantic Image Segmentation") on the shapes backbone, and its
trained-file format.

Structure (``width`` = 16 by default; ``/s`` = resolution relative to the input)::

    backbone.stage1  conv 3x3 (3 -> w), max-pool 2                          /2
    backbone.stage2  conv 3x3 (w -> 2w) x2, max-pool 2     -> low-level skip /4
    backbone.stage3  conv 3x3 stride 2 (2w -> 3w), conv 3x3                  /8
    backbone.stage4  conv 3x3 stride 2 (3w -> 4w), conv 3x3                  /16
    aspp             1x1 conv, three 3x3 atrous convs (rates r1 < r2 < r3) and image pooling,
                     concatenated and projected by a 1x1 conv
    decoder          ASPP output upsampled to /4, concatenated with the skip (1x1-reduced),
                     two 3x3 convs
    classifier       1x1 conv to one logit map per class, upsampled to the input size

The first three stages are the conv stack of `ShapesNet` (same widths and blocks); the
strided stages after them make an output stride of 16. ``output_stride=8`` keeps stage4 at
/8 by atrous convolution: its stride becomes 1 and its convolutions dilate by 2 (the first
one keeps dilation 1 where the stride was, as DeepLab does), so every later unit sees the
same input span as with stride 16 but on a twice-denser grid. ASPP rates default to
``(1, 2, 3)`` at stride 16 and ``(2, 4, 6)`` at stride 8: DeepLab's (6, 12, 18) at 513 px
scaled to 64 px inputs, whose /16 map is 4x4.

``upsample`` picks how the two upsampling steps work: ``"nearest"`` or ``"bilinear"``
interpolation (no weights), or ``"transposed"``: a learned depthwise transposed convolution
(kernel ``2f``, stride ``f`` for factor ``f``) initialised to bilinear interpolation.

Output: logits ``Tensor[B, num_classes, H, W]`` at input resolution; class 0 is background.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convlens.data.preprocess import Preprocess
from convlens.errors import ModelLoadError
from convlens.files import torch_save
from convlens.models.loading import LoadedModel, register_file_format
from convlens.models.shapes import shapes_preprocess

UPSAMPLING = ("nearest", "bilinear", "transposed")
OUTPUT_STRIDES = (8, 16)
DEFAULT_RATES = {16: (1, 2, 3), 8: (2, 4, 6)}
FILE_FORMAT = "convlens-segmentation"


def _conv_block(
    channels_in: int, channels_out: int, stride: int = 1, dilation: int = 1, kernel: int = 3
) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(
            channels_in, channels_out, kernel, stride, padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    )


class AtrousBackbone(nn.Module):
    """The shapes conv stack, extended to output stride 16, or 8 by atrous convolution.

    ``forward`` returns ``(low_level /4, high_level /output_stride)``.
    """

    def __init__(self, width: int = 16, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ModelLoadError(f"output_stride must be 8 or 16, got {output_stride!r}")
        c1, c2, c3, c4 = width, 2 * width, 3 * width, 4 * width
        atrous = output_stride == 8
        self.stage1 = nn.Sequential(_conv_block(3, c1), nn.MaxPool2d(2, ceil_mode=True))
        self.stage2 = nn.Sequential(_conv_block(c1, c2), _conv_block(c2, c2))
        self.pool2 = nn.MaxPool2d(2, ceil_mode=True)
        self.stage3 = nn.Sequential(_conv_block(c2, c3, stride=2), _conv_block(c3, c3))
        self.stage4 = nn.Sequential(
            _conv_block(c3, c4, stride=1 if atrous else 2),
            _conv_block(c4, c4, dilation=2 if atrous else 1),
        )
        self.output_stride = output_stride
        self.low_channels, self.high_channels = c2, c4

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.pool2(self.stage2(self.stage1(images)))
        return low, self.stage4(self.stage3(low))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 conv, one 3x3 conv per rate, and image pooling
    (global mean, 1x1 conv, broadcast back), concatenated and projected by a 1x1 conv.
    ``Tensor[B, C_in, h, w]`` -> ``Tensor[B, channels, h, w]`` for any ``h, w``."""

    def __init__(self, channels_in: int, channels: int, rates: tuple[int, int, int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_block(channels_in, channels, kernel=1)]
            + [_conv_block(channels_in, channels, dilation=r) for r in rates]
        )
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels_in, channels, 1, bias=False),
            nn.ReLU(),
        )
        self.project = _conv_block(channels * (len(rates) + 2), channels, kernel=1)
        self.rates = tuple(rates)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(features).expand(-1, -1, *features.shape[-2:])
        return self.project(torch.cat([b(features) for b in self.branches] + [pooled], dim=1))


class Upsample(nn.Module):
    """Upsample ``Tensor[B, C, h, w]`` to a given size by a factor of about ``factor``:
    nearest or bilinear interpolation, or a depthwise transposed convolution (kernel
    ``2 * factor``, stride ``factor``, initialised to bilinear weights) cropped to size."""

    def __init__(self, channels: int, factor: int, mode: str) -> None:
        super().__init__()
        if mode not in UPSAMPLING:
            raise ModelLoadError(f"unknown upsampling {mode!r}; use one of {UPSAMPLING}")
        self.mode, self.factor = mode, factor
        self.transposed = None
        if mode == "transposed":
            self.transposed = nn.ConvTranspose2d(
                channels, channels, 2 * factor, factor, factor // 2, groups=channels, bias=False
            )
            with torch.no_grad():
                self.transposed.weight.copy_(
                    _bilinear_kernel(factor).expand_as(self.transposed.weight)
                )

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.transposed is None:
            corners = {"align_corners": False} if self.mode == "bilinear" else {}
            return F.interpolate(features, size=size, mode=self.mode, **corners)
        grown = self.transposed(features)
        if grown.shape[-2] < size[0] or grown.shape[-1] < size[1]:
            return F.interpolate(grown, size=size, mode="bilinear", align_corners=False)
        return grown[..., : size[0], : size[1]]


def _bilinear_kernel(factor: int) -> torch.Tensor:
    """``Tensor[2f, 2f]``: the transposed-convolution kernel that upsamples by bilinear
    interpolation for stride ``f`` (tent of half-width ``f`` centred between taps)."""
    size = 2 * factor
    centre = (size - 1) / 2
    tent = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    return torch.outer(tent, tent)


class SegmentationNet(nn.Module):
    """DeepLabv3+-style network (see the module docstring). ``Tensor[B, 3, H, W]`` (any
    ``H, W``; trained at 64x64, mean = std = 0.5) -> logits ``Tensor[B, num_classes, H, W]``.

    ``cam_layer`` names the layer CAM methods use by default (the decoder output, the last
    features before the classifier).
    """

    cam_layer = "decoder"

    def __init__(
        self,
        num_classes: int = 7,
        width: int = 16,
        output_stride: int = 16,
        upsample: str = "bilinear",
        rates: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ModelLoadError(f"output_stride must be 8 or 16, got {output_stride!r}")
        rates = tuple(rates) if rates is not None else DEFAULT_RATES[output_stride]
        if len(rates) != 3 or any(int(r) < 1 for r in rates):
            raise ModelLoadError(f"rates must be three dilations >= 1, got {rates!r}")
        self.backbone = AtrousBackbone(width, output_stride)
        channels = 3 * width
        self.aspp = ASPP(self.backbone.high_channels, channels, rates)
        self.skip = _conv_block(self.backbone.low_channels, width, kernel=1)
        self.upsample_features = Upsample(channels, output_stride // 4, upsample)
        self.decoder = nn.Sequential(
            _conv_block(channels + width, channels), _conv_block(channels, channels)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.upsample_logits = Upsample(num_classes, 4, upsample)
        self.config = {
            "num_classes": num_classes,
            "width": width,
            "output_stride": output_stride,
            "upsample": upsample,
            "rates": list(rates),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(images)
        context = self.upsample_features(self.aspp(high), tuple(low.shape[-2:]))
        fused = self.decoder(torch.cat([context, self.skip(low)], dim=1))
        return self.upsample_logits(self.classifier(fused), tuple(images.shape[-2:]))


def save_segmentation_model(
    model: SegmentationNet,
    path: str | Path,
    classes: list[str] | tuple[str, ...],
    preprocess: Preprocess,
    record: dict | None = None,
) -> Path:
    """Write ``model`` (weights, architecture settings, class names, input size and
    normalisation, training record) to ``path``; `convlens.load_model(path)` reads it back
    as a `LoadedModel` (``--model PATH`` on the command line)."""
    path = Path(path)
    torch_save(
        {
            "format": FILE_FORMAT,
            "config": dict(model.config),
            "state_dict": model.state_dict(),
            "classes": list(classes),
            "size": preprocess.height_width[0],
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
            "record": record or {},
        },
        path,
    )
    return path


def load_segmentation_file(saved: dict, path: Path) -> LoadedModel:
    """The `LoadedModel` (eval mode) of a dict written by `save_segmentation_model`."""
    missing = [
        k for k in ("config", "state_dict", "classes", "size", "mean", "std") if k not in saved
    ]
    if missing:
        raise ModelLoadError(
            f"{path} lacks {missing}; write segmentation models with "
            "convlens.models.segmentation.save_segmentation_model (convlens train "
            "segmentation does)"
        )
    config = dict(saved["config"])
    config["rates"] = tuple(config["rates"])
    module = SegmentationNet(**config)
    module.load_state_dict(saved["state_dict"])
    preprocess = shapes_preprocess(saved["size"], saved["mean"], saved["std"])
    classes = tuple(str(name) for name in saved["classes"])
    return LoadedModel(module.eval(), path.name, preprocess, classes)


register_file_format(FILE_FORMAT, load_segmentation_file)
