"""Pretrained weights from the timm and torchvision hubs without long waits offline.

Both libraries retry downloads for a minute or more when there is no network. Here the
local cache is tried first (timm: Hugging Face offline mode for the call; torchvision: its
checkpoint file in ``torch.hub``'s folder); only on a cache miss is the hub host contacted,
and then only if a connection opens within a few seconds. So an offline machine gets one
clear error in seconds, and a machine with a warm cache never touches the network.
``HF_HUB_OFFLINE=1`` in the environment means: never try the network.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from convlens.errors import ModelLoadError

CONNECT_SECONDS = 3.0


def offline_requested() -> bool:
    """Whether the user asked for no network (``HF_HUB_OFFLINE`` or ``CONVLENS_OFFLINE``)."""
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "CONVLENS_OFFLINE")
    )


def host_reachable(host: str, timeout: float = CONNECT_SECONDS) -> bool:
    """Whether a TCP connection to ``host:443`` opens within ``timeout`` seconds."""
    if offline_requested():
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def not_cached(library: str, name: str, host: str) -> ModelLoadError:
    """The one-line error for pretrained weights that are neither cached nor reachable."""
    return ModelLoadError(
        f"pretrained weights for {library}:{name} are not in the local cache and {host} cannot "
        "be reached. Run once with network access to fill the cache, use random weights "
        "(--random-weights; pretrained=False in Python), or load a state_dict you have "
        f"with --arch {library}:{name} --weights FILE"
    )


@contextmanager
def _hf_offline():
    """Hugging Face offline mode for the block (the module constant it reads per request)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_timm(name: str, pretrained: bool) -> nn.Module:
    """``timm.create_model(name, pretrained=...)``, from the cache first (see module doc)."""
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False)
    try:
        with _hf_offline():
            return timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as error:
        if "Unknown model" in str(error):
            raise
        if not host_reachable("huggingface.co"):
            raise not_cached("timm", name, "huggingface.co") from error
    return timm.create_model(name, pretrained=True)


def torchvision_weights_cached(weights) -> bool:
    """Whether torchvision ``weights`` (a WeightsEnum member) sit in torch.hub's folder."""
    import torch

    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return file.is_file()


def create_torchvision(name: str, weights) -> nn.Module:
    """``torchvision.models.get_model(name, weights=weights)``, refusing in seconds when the
    weights are neither cached nor reachable."""
    import torchvision

    if weights is not None and not torchvision_weights_cached(weights):
        if not host_reachable("download.pytorch.org"):
            raise not_cached("torchvision", name, "download.pytorch.org")
    return torchvision.models.get_model(name, weights=weights)
