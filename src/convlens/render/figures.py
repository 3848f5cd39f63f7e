"""Where pictures go: PNG, PDF or SVG by the file's extension, and the checks made once before
a command writes anything.

Figures are matplotlib `Figure` objects (object API, no pyplot state) saved through the
backend the extension names (Agg for PNG, matplotlib's PDF and SVG backends), so PDF and SVG
are real vector files (text stays text; images inside are embedded rasters). Raster arrays
(``uint8[H, W, 3]``) are written pixel for pixel as PNG, or placed on a page of exactly their
size at ``dpi`` for PDF/SVG. Every file is written through `convlens.files` (all or nothing;
a file convlens did not write is refused unless ``force``) and carries ``convlens`` in its
metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convlens import files
from convlens.errors import ConvlensError
from convlens.files import MARK
from convlens.render.images import save_png

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
DEFAULT_DPI = 150
# zlib level of saved PNG figures (Pillow's default is 6): on a 30-tile explain panel
# (1440 x 3220 px) level 1 took a third of level 6's encoding time (0.44 vs 1.43 s) for 14%
# more bytes (4.6 vs 4.0 MB), measured 2026-12-07; the pixels are the same at any level.
PNG_LEVEL = 1


def output_path(out: str | None, default_name: str, force: bool = False) -> Path:
    """The file a command writes: ``out`` as given, or ``default_name`` inside ``out`` when
    ``out`` ends with ``/`` or is an existing folder (``default_name`` alone when ``out`` is
    None). Checked before any work: the extension must be .png, .pdf or .svg, and an existing
    file that convlens did not write is refused unless ``force``."""
    if out is None:
        path = Path(default_name)
    elif out.endswith(("/", "\\")) or Path(out).is_dir():
        path = Path(out) / default_name
    else:
        path = Path(out)
    check_writable(path, force)
    return path


def output_folder(out: str) -> Path:
    """A folder a command fills (``explain --out``), checked once up front: it may exist as a
    folder or not yet, but must not be a file."""
    return files.check_folder(out)


def check_writable(path: Path, force: bool | None = None) -> None:
    """ConvlensError unless ``path`` has a picture extension and may be (over)written
    (``force`` None: the running command's ``--force``, `convlens.files.writing`)."""
    files.check_creatable(path.parent, path)
    if path.suffix.lower() not in FORMATS:
        raise ConvlensError(
            f"cannot write {path}: the extension decides the format, use .png, .pdf or .svg "
            "(or end the path with / for a folder)"
        )
    if path.is_dir():
        raise ConvlensError(f"{path} is a folder; end --out with / to write inside it")
    files.check_writable(path, force)


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConvlensError(f"cannot write {path}: use a .png, .pdf or .svg file name")
    return fmt


def _metadata(fmt: str) -> dict:
    return {"Software": MARK} if fmt == "png" else {"Creator": MARK}


def save_figure(
    figure, path: str | Path, dpi: int | None = None, force: bool | None = None
) -> Path:
    """Save a matplotlib ``figure`` as PNG, PDF or SVG by ``path``'s extension (parent
    folders created, all or nothing, a foreign file only with ``force``: `files.atomic_file`);
    ``dpi`` for raster output (default 150); PNG deflated at `PNG_LEVEL`."""
    path = Path(path)
    fmt = _format(path)
    if fmt == "png":
        from matplotlib.backends.backend_agg import FigureCanvasAgg as Canvas
    elif fmt == "pdf":
        from matplotlib.backends.backend_pdf import FigureCanvasPdf as Canvas
    else:
        from matplotlib.backends.backend_svg import FigureCanvasSVG as Canvas
    import matplotlib

    Canvas(figure)
    # Text stays text (editable, searchable): SVG <text>, TrueType fonts in the PDF.
    with (
        matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}),
        files.atomic_file(path, force=force) as handle,
    ):
        figure.savefig(
            handle,
            format=fmt,
            dpi=dpi or DEFAULT_DPI,
            metadata=_metadata(fmt),
            **({"pil_kwargs": {"compress_level": PNG_LEVEL}} if fmt == "png" else {}),
        )
    return path


def save_image(
    image, path: str | Path, dpi: int | None = None, force: bool | None = None
) -> Path:
    """Write ``uint8[H, W, 3]`` (or ``[H, W]``): PNG pixel for pixel, or a PDF/SVG page of
    ``W / dpi x H / dpi`` inches holding the image (default dpi 150)."""
    path = Path(path)
    fmt = _format(path)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ConvlensError(f"save_image takes uint8[H, W(, 3)] pixels, got {array.dtype}")
    if fmt == "png":
        return save_png(array, path, force)
    from matplotlib.figure import Figure

    dpi = dpi or DEFAULT_DPI
    height, width = array.shape[:2]
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(array, cmap="gray" if array.ndim == 2 else None, interpolation="nearest")
    axes.set_axis_off()
    return save_figure(figure, path, dpi, force)


def to_array(figure) -> np.ndarray:
    """A matplotlib figure rendered to ``uint8[H, W, 3]`` (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def check_output(out: str | None, force: bool = False) -> None:
    """The up-front part of `output_path`, before a command does any work: a file ``out`` is
    checked now; a folder ``out`` (trailing ``/`` or existing) must not be a file."""
    if out is None:
        return
    if out.endswith(("/", "\\")):
        output_folder(out.rstrip("/\\") or out)
    elif not Path(out).is_dir():
        check_writable(Path(out), force)
