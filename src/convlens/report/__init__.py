"""Self-contained HTML reports: one page per run, every picture inlined, nothing fetched."""

from convlens.report.build import DEFAULT_METHODS, build_report, write_report
from convlens.report.views import ColourScale, MapView, map_box, map_view

__all__ = [
    "DEFAULT_METHODS",
    "ColourScale",
    "MapView",
    "build_report",
    "map_box",
    "map_view",
    "write_report",
]
