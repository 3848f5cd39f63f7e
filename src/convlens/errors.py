"""The few exception types convlens raises. Every message says what was wrong and what to do."""

from __future__ import annotations


class ConvlensError(Exception):
    """Base class of every error convlens raises on bad input."""


class ModelLoadError(ConvlensError):
    """A model name or path could not be turned into a network."""


class ImageLoadError(ConvlensError):
    """A file or object could not be read as an image."""


class ImageTooLargeError(ImageLoadError):
    """An image has more pixels than the reader allows (``max_pixels``): a decompression
    bomb, or a file to shrink before use."""


class LayerError(ConvlensError, ValueError):
    """A layer name or index does not exist, or the layer does not suit the method."""


class TargetError(ConvlensError, ValueError):
    """A target (the score to explain) is malformed or out of range."""


class MethodError(ConvlensError, ValueError):
    """An unknown method name or a bad option for a method."""


class MetricError(ConvlensError, ValueError):
    """A map, mask, box or curve given to a metric is malformed (wrong size, NaN, empty)."""


class DataError(ConvlensError, ValueError):
    """A data set's settings, an annotation file or a training input is malformed."""


class DeviceError(ConvlensError, ValueError):
    """A device name is unknown, or names a device this machine does not have."""


class OutputExistsError(ConvlensError):
    """A file convlens would write exists and is not one convlens wrote (or it was changed
    since): it is replaced only with ``--force`` (``force=True``)."""


class DiskFullError(ConvlensError):
    """The disk (or quota) filled up while convlens wrote a file; the earlier file stays."""


class OutputError(ConvlensError):
    """An output path convlens cannot write: under a file, or in a folder without write
    permission. Raised before any work."""
