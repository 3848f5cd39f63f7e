"""Command help is wrapped once, by the terminal: no docstring line break survives into it."""

from __future__ import annotations

import inspect
import re

import pytest
from tests.helpers.cli import HELP_WIDTH, help_text

from convlens.cli import app

WIDTH = HELP_WIDTH


def _callbacks(typer_app, prefix: str = "") -> dict:
    """The function of every command of ``typer_app`` and its sub-apps, by its words."""
    found = {
        f"{prefix}{info.name}": info.callback for info in typer_app.registered_commands if info.name
    }
    for group in typer_app.registered_groups:
        found |= _callbacks(group.typer_instance, f"{prefix}{group.name} ")
    return found


CALLBACKS = _callbacks(app)
COMMANDS = sorted(CALLBACKS)


def _help_text(command: str, capsys, monkeypatch) -> str:
    """The command's help as printed at `WIDTH` columns (`tests.helpers.cli.help_text`:
    rendered once for the suite)."""
    return help_text(command, WIDTH)


def _help_paragraphs(text: str) -> list[list[str]]:
    """The lines of each paragraph of a help text's description (before the option boxes),
    without the one-space margin."""
    body = text.split("╭", 1)[0].split("Usage:", 1)[1].split("\n", 1)[1]
    paragraphs = [p.splitlines() for p in re.split(r"\n\s*\n", body)]
    return [[line.strip() for line in p if line.strip()] for p in paragraphs if any(p)]


def _docstring(command: str) -> str:
    return inspect.cleandoc(CALLBACKS[command].__doc__)


def test_explain_help_paragraphs_are_wrapped_once(capsys, monkeypatch):
    paragraphs = _help_paragraphs(_help_text("explain", capsys, monkeypatch))
    docstring = _docstring("explain").split("\n\n")
    assert len(paragraphs) == len(docstring) >= 2  # the explain docstring has two paragraphs
    for lines, source in zip(paragraphs, docstring, strict=True):
        assert " ".join(lines).split() == source.split()  # the same words, in order
        _assert_filled(lines)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_is_wrapped_once_and_shows_flags_as_flags(command, capsys, monkeypatch):
    text = _help_text(command, capsys, monkeypatch)
    for lines in _help_paragraphs(text):
        _assert_filled(lines)
    typed_flags = [line for line in text.splitlines() if "<bool>" in line]
    assert all("--help" in line for line in typed_flags), typed_flags  # typer's own --help


def _assert_filled(lines: list[str]) -> None:
    """Greedy wrapping at the terminal width: each line but the last ends only because its
    next word would not fit (a line broken in the source would end earlier)."""
    room = WIDTH - 2  # one column of margin on each side
    for line, following in zip(lines, lines[1:], strict=False):
        assert len(line) + 1 + len(following.split()[0]) > room, (line, following)


def test_evaluate_limit_help_states_the_default_limits():
    import typer

    from convlens.evaluate.benchmark import DEFAULT_LIMITS

    command = typer.main.get_command(app).commands["evaluate"]
    (limit,) = [p for p in command.params if p.name == "limit"]
    words = " ".join(limit.help.replace(",", " ").replace(")", " ").split())
    for benchmark, default in DEFAULT_LIMITS.items():
        assert f"{default} {benchmark} " in words, benchmark
