"""Fingerprints that say whether two things are the same: a file's bytes, a model's weights.

`file_sha256` recognises a model file (``index.json`` records the one an embedding was made
with); `weights_sha256` recognises a network by its parameters and buffers wherever it lives
(a saved scan state records the model it was made with).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(module: nn.Module) -> str:
    """Hex SHA-256 of ``module.state_dict()``: every entry's name, dtype, shape and bytes,
    in name order. The same on every device; any changed value changes it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        raw = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()
