"""One default model name and one version, read by every command and function."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest
from tests.helpers.source import parsed

import convlens
import convlens.models
from convlens import package
from convlens.cli import main

SOURCE = Path(__file__).resolve().parents[1] / "src" / "convlens"


@pytest.fixture
def fresh_version():
    package.version.cache_clear()
    yield
    package.version.cache_clear()


def test_the_version_is_the_installed_metadata(monkeypatch, capsys, fresh_version):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "7.8.9")
    assert package.version() == "7.8.9"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "convlens 7.8.9"


def test_a_source_tree_never_installed_has_an_unknown_version(monkeypatch, fresh_version):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert package.version() == package.UNKNOWN_VERSION
    assert main(["--version"]) == 0  # no traceback


def test_the_default_model_name_is_written_once():
    """Every default (CLI options, load_model, the web view) is `DEFAULT_MODEL`: the name
    appears as a string in `convlens.package` only."""
    places = [
        str(path.relative_to(SOURCE))
        for path in sorted(SOURCE.rglob("*.py"))
        for node in ast.walk(parsed(path))
        if isinstance(node, ast.Constant) and node.value == package.DEFAULT_MODEL
    ]
    assert places == ["package.py"]
    assert convlens.DEFAULT_MODEL == convlens.models.DEFAULT_MODEL == package.DEFAULT_MODEL
