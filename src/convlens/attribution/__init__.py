"""Why this decision: attribution methods, one registry, one `explain` entry point."""

from convlens.attribution.common import normalize_maps, upsample
from convlens.attribution.explain import Explanation, explain
from convlens.attribution.registry import MethodInfo, get_method, list_methods, register_method

__all__ = [
    "Explanation",
    "MethodInfo",
    "explain",
    "get_method",
    "list_methods",
    "normalize_maps",
    "register_method",
    "upsample",
]
