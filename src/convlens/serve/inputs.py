"""What a request may send: an uploaded image's bytes or a sample's name, never a path on the
server; and a cap on the bytes of any request body, enforced while it is received."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import HTTPException

from convlens.data.images import ImageBatch, load_images
from convlens.data.samples import SAMPLES, sample_names, sample_path
from convlens.errors import ConvlensError, ImageLoadError, ImageTooLargeError
from convlens.models.loading import LoadedModel
from convlens.serve.guard import send_json_error

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small text fields


# (option, unit, smallest, largest) of each limit `ServeSettings.from_options` accepts.
OPTION_RANGES = {
    "max_upload_mb": ("--max-upload-mb", "MB", 0.001, 1000.0),
    "max_megapixels": ("--max-megapixels", "megapixels", 0.001, 1000.0),
    "time_limit_s": ("--time-limit", "seconds", 0.01, 3600.0),
    "max_queue": ("--queue", "requests", 1, 1000),
}


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the web view: ``max_upload_bytes`` per request body, ``max_pixels`` per
    decoded image (checked from the file header, before decoding), ``time_limit_s`` per
    request in the server (then it is stopped and answers 503), ``max_queue`` requests
    waiting or running at once (one more answers 429). Values outside the ranges of
    `OPTION_RANGES` raise `ConvlensError`."""

    max_upload_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    time_limit_s: float = 60.0
    max_queue: int = 8

    def __post_init__(self) -> None:
        _check_range("max_upload_mb", self.max_upload_bytes / 1e6)
        _check_range("max_megapixels", self.max_pixels / 1e6)
        _check_range("time_limit_s", self.time_limit_s)
        _check_range("max_queue", self.max_queue)

    @classmethod
    def from_options(
        cls, max_upload_mb: float, max_megapixels: float, time_limit_s: float, max_queue: int
    ) -> ServeSettings:
        """The settings of ``convlens serve``'s options (sizes in MB and megapixels)."""
        _check_range("max_upload_mb", max_upload_mb)
        _check_range("max_megapixels", max_megapixels)
        return cls(
            max_upload_bytes=int(max_upload_mb * 1e6),
            max_pixels=int(max_megapixels * 1e6),
            time_limit_s=float(time_limit_s),
            max_queue=int(max_queue),
        )


def _check_range(key: str, value: float) -> None:
    option, unit, low, high = OPTION_RANGES[key]
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise ConvlensError(f"{option} {value!r} is out of range; give {low:g} to {high:g} {unit}")


class UploadTooLarge(HTTPException):
    """A request body larger than the server accepts (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the upload is larger than this server's limit of {limit} bytes; send a smaller "
            "image (or start the server with a larger --max-upload-mb)",
        )


class BodyLimit:
    """ASGI middleware: a request whose ``Content-Length`` exceeds ``limit`` bytes is
    answered 413 before its body is read; a body that turns out longer (chunked uploads)
    is cut off with `UploadTooLarge` as soon as the limit is passed."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await send_json_error(send, 413, UploadTooLarge(self.limit).detail)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLarge(self.limit)
            return message

        return await self.app(scope, limited_receive, send)


def check_sample_name(name: str) -> str:
    """``name`` when it is one of the sample names; a path, or anything else, is refused
    (`ImageLoadError` listing the names): the server never opens a path a client sends."""
    if name not in SAMPLES:
        raise ImageLoadError(
            f"sample {name[:80]!r} is not a sample name; choose one of "
            f"{', '.join(sample_names())}, or upload the image itself as 'image' (paths on "
            "the server are never read)"
        )
    return name


def request_image(
    model: LoadedModel, data: bytes | None, sample: str | None, settings: ServeSettings
) -> ImageBatch:
    """A batch of one: the uploaded ``data`` or the sample ``sample`` (exactly one of
    them), through the model's preprocessing, with the pixel limit applied."""
    if (data is None) == (sample is None):
        raise ImageLoadError("send exactly one of 'image' (a file upload) or 'sample' (a name)")
    if data is not None:
        if not data:
            raise ImageLoadError("the uploaded 'image' is empty; choose an image file")
        try:
            batch = load_images([data], model.preprocess, max_pixels=settings.max_pixels)
        except ImageTooLargeError as error:
            message = str(error).removeprefix("<bytes>")
            raise ImageTooLargeError(f"the uploaded image{message}") from error
        except ImageLoadError as error:
            raise ImageLoadError(
                "the uploaded 'image' is not a readable image; send a PNG, JPEG, GIF, BMP, "
                "TIFF or WebP file"
            ) from error
        return ImageBatch(batch.tensor, batch.display, ["upload"], batch.errors)
    path = sample_path(check_sample_name(sample))
    batch = load_images([path], model.preprocess, max_pixels=settings.max_pixels)
    return ImageBatch(batch.tensor, batch.display, [sample], batch.errors)
