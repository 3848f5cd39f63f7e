"""The FastAPI app of the web view: a JSON API over `explain`, the feature views and the layer
table, and the static page that uses it. Every error is ``{"error": message}`` quoting at
most `INPUT_CHARS` characters of any input, with a 4xx or 5xx status (403 for a foreign
``Host`` or a cross-site post, 413 for an upload or image over the limits, 409 for a
cancelled job, 429 with ``Retry-After`` when the queue is full, 503 past the time limit);
the server keeps serving after any of them. The API is described at ``/openapi.json`` (no docs page:
the usual ones load their scripts from a CDN)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastApiPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from convlens.data.images import ImageBatch
from convlens.errors import ConvlensError, ImageTooLargeError
from convlens.layers.interrupt import Interrupted
from convlens.models.loading import LoadedModel
from convlens.package import version
from convlens.serve import api
from convlens.serve.atlas import PAGE_POLICY, AtlasFolder, AtlasListing, AtlasPathError, no_atlas
from convlens.serve.desk import (
    CANCELLED,
    SHUTDOWN,
    TIME_LIMIT,
    CancelRefused,
    JobConflict,
    ModelDesk,
    QueueFull,
    ServerClosing,
    Ticket,
    TimeLimitExceeded,
)
from convlens.serve.guard import AllowedHosts, RequestGuard
from convlens.serve.inputs import (
    FORM_OVERHEAD,
    BodyLimit,
    ServeSettings,
    UploadTooLarge,
    request_image,
)

STATIC = Path(__file__).resolve().parent / "static"
DISCONNECT_POLL_SECONDS = 0.1
INPUT_CHARS = 200  # the longest text field accepted, so the most of it an error can quote
MAX_ERROR_CHARS = 1000  # and no error message is longer than this
T = TypeVar("T")
R = TypeVar("R")

ImageField = Annotated[UploadFile | None, File(description="An image file (PNG, JPEG, ...).")]
SampleField = Annotated[
    str | None, Form(max_length=INPUT_CHARS, description="A sample name (see /api/samples).")
]
JobField = Annotated[
    str | None,
    Form(
        max_length=INPUT_CHARS,
        description="Optional id from POST /api/jobs; POST /api/cancel/{job} with its token "
        "stops the request.",
    ),
]


def create_app(
    model: LoadedModel,
    settings: ServeSettings | None = None,
    atlas: str | Path | AtlasFolder | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> FastAPI:
    """The app serving ``model`` (lent to one request at a time, see `ModelDesk`) and, when
    ``atlas`` names a scan's atlas folder, that folder read-only (`AtlasFolder`). It
    answers only requests addressed to ``host`` (the address it is bound to) or localhost,
    on ``port`` (None: any port), and no cross-site post (`convlens.serve.guard`)."""
    settings = settings or ServeSettings()
    if atlas is not None and not isinstance(atlas, AtlasFolder):
        atlas = AtlasFolder.open(atlas)
    desk = ModelDesk(model, settings.max_queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        desk.close()

    app = FastAPI(
        lifespan=lifespan,
        title="convlens",
        summary="What a CNN learned and why it decided, over HTTP.",
        version=version(),
        docs_url=None,
        redoc_url=None,
    )
    app.state.desk = desk
    app.state.settings = settings
    _add_error_handlers(app)
    _add_routes(app, desk, settings)
    _add_atlas_routes(app, atlas)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(RequestGuard, allowed=AllowedHosts(host, port))  # runs first
    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    def one_line(error: BaseException) -> str:
        return " ".join(str(error).split())

    @app.exception_handler(ImageTooLargeError)
    async def too_large(_request, error):
        return _error(413, one_line(error))

    @app.exception_handler(AtlasPathError)
    async def not_in_atlas(_request, error):
        return _error(404, one_line(error))

    @app.exception_handler(Interrupted)
    async def interrupted(_request, error):
        return _error(409, f"cancelled: {one_line(error)}")

    @app.exception_handler(JobConflict)
    async def conflict(_request, error):
        return _error(409, one_line(error))

    @app.exception_handler(CancelRefused)
    async def refused(_request, error):
        return _error(403, one_line(error))

    @app.exception_handler(QueueFull)
    async def busy(_request, error):
        return _error(429, one_line(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(TimeLimitExceeded)
    @app.exception_handler(ServerClosing)
    async def unavailable(_request, error):
        return _error(503, one_line(error))

    @app.exception_handler(ConvlensError)
    async def bad_input(_request, error):
        return _error(400, one_line(error))

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and the router's own 404
    async def http_error(_request, error):
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error):
        parts = [
            f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg')}"
            for item in error.errors()
        ]
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def failed(_request, error):  # a model that fails: say so, keep serving
        return _error(500, f"{type(error).__name__}: {one_line(error)}")


async def _read_upload(image: UploadFile | None, settings: ServeSettings) -> bytes | None:
    if image is None:
        return None
    data = await image.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLarge(settings.max_upload_bytes)
    return data


async def _served(
    request: Request,
    desk: ModelDesk,
    settings: ServeSettings,
    job: str | None,
    decode: Callable[[], ImageBatch] | None,
    compute: Callable[[ImageBatch | None], T],
    draw: Callable[[T], R] | None = None,
) -> T | R:
    """One request in three steps: ``decode()`` on the desk's pixel thread, ``compute`` of
    its result with the model lent (`ModelDesk.run`), then ``draw`` of that (when given) on
    the pixel thread again, so decoding and drawing overlap other requests' model work.
    Admitted to the desk's queue first (`QueueFull` when it is full). Stopped when the
    client disconnects, job ``job`` is cancelled, the time limit passes or the server shuts
    down: a running step finishes (the model's step stops before its next forward pass),
    the next never starts, and the answer says which of them stopped it."""
    with desk.admit() as ticket, desk.job(job, ticket):
        deadline = time.monotonic() + settings.time_limit_s
        try:
            batch = None
            if decode is not None:
                decoding = desk.submit_pixels(decode, ticket)
                batch = await _until_done(request, ticket, decoding, deadline)
            computing = desk.submit(lambda: compute(batch), ticket)
            computed = await _until_done(request, ticket, computing, deadline)
            if draw is None:
                return computed
            drawing = desk.submit_pixels(lambda: draw(computed), ticket)
            return await _until_done(request, ticket, drawing, deadline)
        except Interrupted as stopped:
            error = _stopped_error(ticket, settings)
            if error is None:
                raise
            raise error from stopped


def _stopped_error(ticket: Ticket, settings: ServeSettings) -> Exception | None:
    """The error a request stopped by its time limit or shutdown answers (None: it was
    cancelled, which answers 409)."""
    if ticket.reason == TIME_LIMIT:
        return TimeLimitExceeded(
            f"the request was stopped at this server's time limit of {settings.time_limit_s:g} "
            "s; try a faster method or smaller image, or start the server with a larger "
            "--time-limit"
        )
    if ticket.reason == SHUTDOWN:
        return ServerClosing("the server is shutting down; the request was stopped")
    return None


async def _until_done(request: Request, ticket: Ticket, future: Future, deadline: float) -> T:
    """``future``'s result; meanwhile stops ``ticket`` when the client disconnects or
    ``deadline`` (`time.monotonic`) passes."""
    task = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return task.result()
        if ticket.stopped:
            continue
        if time.monotonic() > deadline:
            ticket.stop(TIME_LIMIT)
        elif await request.is_disconnected():
            ticket.stop(CANCELLED)


def _add_routes(app: FastAPI, desk: ModelDesk, settings: ServeSettings) -> None:
    model = desk.model
    cache: dict[str, api.Layers] = {}  # the layer table, computed on first request

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False, status_code=204)
    async def no_icon() -> Response:  # pages without an icon link (the atlas) ask for one
        return Response(status_code=204)

    @app.get("/api/health", response_model=api.Health)
    async def health() -> api.Health:
        """The server is up; which model it serves."""
        return api.Health(status="ok", model=model.name, version=version())

    @app.get("/api/methods", response_model=list[api.Method])
    async def methods() -> list[api.Method]:
        """The attribution methods `method` may name."""
        return api.method_list()

    @app.get("/api/samples", response_model=list[str])
    async def samples() -> list[str]:
        """The sample names `sample` may name."""
        from convlens.data.samples import sample_names

        return sample_names()

    @app.get("/api/classes", response_model=list[api.ClassName])
    async def classes() -> list[api.ClassName]:
        """The model's classes (id and name), for `target` and `contrast`."""
        return api.class_list(model)

    @app.get("/api/layers", response_model=api.Layers)
    async def layers(request: Request) -> api.Layers:
        """The model's layer table: name, type, output shape, receptive field; `spatial`
        layers suit the CAM methods, `default` is theirs."""
        if "layers" not in cache:

            def table(_nothing):
                return api.layer_rows(model)

            cache["layers"] = await _served(request, desk, settings, None, None, table)
        return cache["layers"]

    @app.post("/api/predict", response_model=api.Prediction)
    async def predict(
        request: Request,
        image: ImageField = None,
        sample: SampleField = None,
        top: Annotated[int, Form(ge=1, le=100, description="How many classes.")] = 5,
    ) -> api.Prediction:
        """The most probable classes of an uploaded image or a sample."""
        data = await _read_upload(image, settings)

        def decode():
            return request_image(model, data, sample, settings)

        def compute(batch):
            return api.predict(model, batch, top)

        return await _served(request, desk, settings, None, decode, compute)

    @app.post("/api/explain", response_model=api.ExplainResult)
    async def explain(
        request: Request,
        image: ImageField = None,
        sample: SampleField = None,
        method: Annotated[
            str, Form(max_length=INPUT_CHARS, description="A name from /api/methods.")
        ] = "gradcam",
        target: Annotated[
            str, Form(max_length=INPUT_CHARS, description="top1, topK, a class id or name.")
        ] = "top1",
        contrast: Annotated[
            str | None,
            Form(max_length=INPUT_CHARS, description="Optional class: explain target - it."),
        ] = None,
        layer: Annotated[
            str | None,
            Form(max_length=INPUT_CHARS, description="Layer for CAM methods (default: theirs)."),
        ] = None,
        job: JobField = None,
    ) -> api.ExplainResult:
        """One method's map for one image: the class explained, its score, the overlay as a
        PNG data URI, the box and the colour scale of the raw map."""
        data = await _read_upload(image, settings)
        start = time.perf_counter()

        def decode():
            return request_image(model, data, sample, settings)

        def compute(batch):
            return api.explain_map(model, batch, method, target, contrast, layer or None)

        def draw(item):
            return api.explain_answer(item, target, contrast)

        result = await _served(request, desk, settings, job, decode, compute, draw)
        return result.model_copy(update={"total_seconds": time.perf_counter() - start})

    @app.post("/api/features", response_model=api.Features)
    async def features(
        request: Request,
        image: ImageField = None,
        sample: SampleField = None,
        layer: Annotated[
            str | None,
            Form(max_length=INPUT_CHARS, description="Layer (default: the CAM layer)."),
        ] = None,
        top: Annotated[int, Form(ge=1, le=256, description="Channels shown.")] = 16,
        job: JobField = None,
    ) -> api.Features:
        """The strongest channels of one layer for one image, as a captioned grid."""
        data = await _read_upload(image, settings)

        def decode():
            return request_image(model, data, sample, settings)

        def compute(batch):
            return api.features(model, batch, layer, top)

        return await _served(request, desk, settings, job, decode, compute)

    @app.get("/api/filters", response_model=api.Filters)
    async def filters(
        request: Request, layer: Annotated[str | None, Query(max_length=INPUT_CHARS)] = None
    ) -> api.Filters:
        """A convolution's filters (default: the first) as a captioned grid."""

        def grid(_nothing):
            return api.filters(model, layer)

        return await _served(request, desk, settings, None, None, grid)

    @app.post("/api/jobs", response_model=api.NewJob)
    async def new_job() -> api.NewJob:
        """A job id for one request's ``job`` field, and the token that cancels it (keep
        the token; an id unused for 10 minutes is forgotten)."""
        job, token = desk.reserve_job()
        return api.NewJob(job=job, token=token)

    @app.post("/api/cancel/{job}", response_model=api.Cancelled)
    async def cancel(
        job: Annotated[str, FastApiPath(max_length=INPUT_CHARS)],
        token: Annotated[
            str, Form(max_length=INPUT_CHARS, description="The token POST /api/jobs returned.")
        ] = "",
    ) -> api.Cancelled:
        """Stop job ``job`` (a request sent with that `job` field, or about to be): it
        answers 409 and the model is free for the next request (``cancelled`` true). A job
        whose request has just ended (answered, or stopped when its client left) answers
        ``cancelled`` false. 403 without the job's token, 404 when no such job is known."""
        if desk.cancel(job, token):
            return api.Cancelled(job=job, cancelled=True)
        if desk.finished(job, token):
            return api.Cancelled(job=job, cancelled=False)
        raise HTTPException(404, f"no running job {job[:80]!r}")


def _add_atlas_routes(app: FastAPI, atlas: AtlasFolder | None) -> None:
    @app.get("/api/atlas", response_model=AtlasListing)
    def atlas_listing() -> AtlasListing:
        """The pages and pictures of the atlas folder given with ``--atlas`` (``enabled``
        false and empty lists without one)."""
        return atlas.listing() if atlas is not None else no_atlas()

    @app.get("/atlas/{name:path}")
    def atlas_file(name: str) -> FileResponse:
        """One page, picture or JSON file of the atlas folder, by its path inside it
        (``/atlas/`` alone: ``index.html``). Anything else, a path leading out of the
        folder included, answers 404."""
        if atlas is None:
            raise HTTPException(404, "this server was started without --atlas DIR")
        path = atlas.file(name or "index.html")
        headers = {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"}
        return FileResponse(path, headers=headers)
