"""`MethodResult`: what a registered method computed (see `convlens.attribution.registry`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class MethodResult:
    """What a registered method computed (see the module docstring): ``maps``
    ``Tensor[N, H, W]``, ``output`` the model output on the clean explained rows
    ``Tensor[N, ...]`` (detached), ``extras`` its by-products, ``gradient`` the input
    gradient behind a rule map."""

    maps: torch.Tensor
    output: torch.Tensor
    extras: dict = field(default_factory=dict)
    gradient: torch.Tensor | None = None

    def public(self) -> torch.Tensor | tuple[torch.Tensor, dict]:
        """What the public method function returns: ``maps``, or ``(maps, extras)``."""
        return (self.maps, self.extras) if self.extras else self.maps
