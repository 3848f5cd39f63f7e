"""Why this decision: attribution methods, one registry, one `explain` entry point."""

from convlens.attribution.explain import Explanation, explain
from convlens.attribution.methods import get_method, list_methods
from convlens.attribution.registry import MethodInfo, register_method

__all__ = [
    "Explanation",
    "MethodInfo",
    "explain",
    "get_method",
    "list_methods",
    "register_method",
]
