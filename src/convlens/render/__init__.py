"""Colormaps, overlays, grids, PNG files; later plots and HTML pages."""

from convlens.render.images import colorize, image_grid, overlay, save_png

__all__ = ["colorize", "image_grid", "overlay", "save_png"]
