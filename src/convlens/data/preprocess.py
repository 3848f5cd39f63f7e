"""How a picture becomes the tensor a model sees, and back.

A `Preprocess` travels with a `LoadedModel` (like timm's pretrained_cfg) so no call site
guesses sizes or normalisation. It produces two things for every image: the *display*
RGB (uint8, exactly the pixels the model sees, after resize and crop) and the normalised
tensor. Maps at input resolution therefore overlay the display image pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from convlens.data.images import load_images
from convlens.errors import ConvlensError

ResizeMode = Literal["center_crop", "stretch", "pad", "none"]
RESIZE_MODES = ("center_crop", "stretch", "pad", "none")
_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """Resize/crop and normalisation for one model.

    - ``center_crop``: scale the shorter side to ``size / crop_pct``, then crop the centre
      ``size x size`` (the ImageNet evaluation protocol).
    - ``stretch``: resize to ``size x size`` without keeping the aspect ratio.
    - ``pad``: scale the longer side to ``size`` (aspect ratio kept, nothing cut off) and
      pad the rest equally on both sides with the mean colour (about 0 after normalisation).
    - ``none``: keep the image's own size (fully convolutional use, non-square inputs).
    """

    size: int | tuple[int, int] = 224
    mode: ResizeMode = "center_crop"
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ConvlensError(
                f"unknown resize mode {self.mode!r}; use one of {', '.join(RESIZE_MODES)}"
            )
        if self.interpolation not in _INTERPOLATION:
            raise ConvlensError(
                f"unknown interpolation {self.interpolation!r}; use one of {sorted(_INTERPOLATION)}"
            )

    @property
    def height_width(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    def resize_crop(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The geometry `display` applies to an image of ``size = (width, height)``: the
        size it is resized to, ``(width', height')``, and the ``(left, top)`` corner of the
        crop taken from the resized image (the crop has the model's size; ``mode="none"``
        keeps the image as it is). A point ``(x, y)`` of the original image lands at
        ``(x * width' / width - left, y * height' / height - top)``."""
        width, height = size
        if self.mode == "none":
            return (width, height), (0, 0)
        out_h, out_w = self.height_width
        if self.mode == "stretch":
            return (out_w, out_h), (0, 0)
        if self.mode == "pad":  # the corner is negative: the image sits inside the frame
            scale = min(out_w / width, out_h / height)
            scaled = (
                min(out_w, max(1, round(width * scale))),
                min(out_h, max(1, round(height * scale))),
            )
            return scaled, (-((out_w - scaled[0]) // 2), -((out_h - scaled[1]) // 2))
        scale = max(out_h, out_w) / self.crop_pct / min(size)
        scaled = (max(out_w, round(width * scale)), max(out_h, round(height * scale)))
        return scaled, ((scaled[0] - out_w) // 2, (scaled[1] - out_h) // 2)

    def display(self, image: Image.Image) -> np.ndarray:
        """The pixels the model sees: ``uint8[H, W, 3]`` after resize and crop."""
        image = image.convert("RGB")
        if self.mode != "none":
            scaled, (left, top) = self.resize_crop(image.size)
            height, width = self.height_width
            image = image.resize(scaled, _INTERPOLATION[self.interpolation])
            if self.mode == "pad":
                frame = Image.new("RGB", (width, height), self.mean_colour)
                frame.paste(image, (-left, -top))
                image = frame
            else:
                image = image.crop((left, top, left + width, top + height))
        return np.asarray(image, dtype=np.uint8).copy()

    @property
    def mean_colour(self) -> tuple[int, int, int]:
        """The mean as 8-bit RGB: the padding colour of ``mode="pad"``."""
        return tuple(round(255 * m) for m in self.mean)

    def normalize(self, display: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8[..., H, W, 3]`` display pixels to the normalised ``Tensor[..., 3, H, W]``."""
        pixels = torch.as_tensor(np.asarray(display)).float().div(255.0)
        pixels = pixels.movedim(-1, -3)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std

    def denormalize(self, tensor: torch.Tensor) -> torch.Tensor:
        """Normalised ``Tensor[..., 3, H, W]`` back to pixel values in [0, 1] (clamped)."""
        mean = torch.tensor(self.mean, device=tensor.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=tensor.device).view(3, 1, 1)
        return (tensor.detach() * std + mean).clamp(0, 1)

    def __call__(self, images) -> torch.Tensor:
        """Anything `load_images` takes to the normalised ``Tensor[B, 3, H, W]``."""
        return load_images(images, preprocess=self).tensor


IMAGENET_PREPROCESS = Preprocess()
