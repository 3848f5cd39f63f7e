"""The commands of the ``convlens`` CLI, walked (sub-commands included)."""

from __future__ import annotations

import contextlib
import functools
import io
import os

import typer

from convlens.cli import app


def command_paths(group=None, prefix: tuple[str, ...] = ()) -> dict:
    """Every runnable command under ``group`` (default: the ``convlens`` app), hidden ones
    included, by its words (``"explain"``, ``"train head"``): sub-groups are walked, not
    listed themselves."""
    group = typer.main.get_command(app) if group is None else group
    found = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer's own copy of click's Group)
            found |= command_paths(command, (*prefix, name))
        else:
            found[" ".join((*prefix, name))] = command
    return found


def options_of(command) -> dict[str, object]:
    """``{"--flag": parameter}`` for every option spelling of ``command``."""
    return {opt: param for param in command.params for opt in param.opts if opt.startswith("-")}


def commands_with_any(spellings: set[str]) -> dict[str, set[str]]:
    """``{words: option spellings}`` of every command (`command_paths`) that has at least one
    of ``spellings``, e.g. every command with ``--out`` or ``-o``."""
    found = {}
    for name, command in command_paths().items():
        options = set(options_of(command))
        if options & spellings:
            found[name] = options
    return found


HELP_WIDTH = 72


@functools.cache
def help_text(words: str, width: int = HELP_WIDTH) -> str:
    """What ``convlens WORDS --help`` prints at ``width`` columns; rendered once per suite
    (several test modules read the help of every command, and each rendering takes a
    tenth of a second)."""
    from convlens.cli import main

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main([*words.split(), "--help"]) == 0
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue()
