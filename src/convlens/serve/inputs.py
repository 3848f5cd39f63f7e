"""What a request may send: an uploaded image's bytes or a sample's name, never a path on the
server; and a cap on the bytes of any request body, enforced while it is received."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException

from convlens.data.images import ImageBatch, load_images
from convlens.data.samples import SAMPLES, sample_names, sample_path
from convlens.errors import ImageLoadError, ImageTooLargeError
from convlens.models.loading import LoadedModel

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small text fields


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the web view: ``max_upload_bytes`` per request body, ``max_pixels`` per
    decoded image (checked from the file header, before decoding)."""

    max_upload_bytes: int = 20_000_000
    max_pixels: int = 40_000_000


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
            return await _json_413(send, UploadTooLarge(self.limit).detail)
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


async def _json_413(send, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
