"""The scan tests' shared torchrun launch (`tests.helpers.torchrun`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers.torchrun import torchrun_commands


@pytest.fixture(scope="session")
def two_process_outputs(tmp_path_factory) -> Path:
    """The folder of `TWO_PROCESS_COMMANDS`' outputs from one two-process torchrun launch
    (``<folder>/scan``, ``/embed``, ``/attribute``): started once, by the first test that
    asks."""
    return torchrun_commands(tmp_path_factory.mktemp("torchrun"))
