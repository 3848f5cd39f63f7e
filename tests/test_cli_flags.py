"""One name per meaning across the commands: ``--method`` (``--methods`` only as a hidden
old spelling), ``--top`` for "how many" (``--k`` only hidden), and ``--labels`` /
``--width`` meaning the same thing wherever they appear."""

from __future__ import annotations

import pytest
from tests.helpers.cli import command_paths, options_of

COMMANDS = command_paths()


@pytest.mark.parametrize(("old", "new"), [("--methods", "--method"), ("--k", "--top")])
def test_old_spellings_are_hidden_aliases_beside_the_new_name(old, new):
    with_old = {name: cmd for name, cmd in COMMANDS.items() if old in options_of(cmd)}
    assert with_old  # the old spelling is still accepted somewhere
    for name, command in with_old.items():
        options = options_of(command)
        assert options[old].hidden, f"convlens {name} shows {old}; show {new} only"
        assert new in options and not options[new].hidden, f"convlens {name} lacks {new}"


def test_the_how_many_option_is_top_everywhere():
    have_top = {name for name, cmd in COMMANDS.items() if "--top" in options_of(cmd)}
    assert {"predict", "report", "features", "scan", "neighbors"} <= have_top


@pytest.mark.parametrize("flag", ["--labels", "--width"])
def test_a_flag_means_one_thing_on_every_command(flag):
    """``--labels`` is a class names file and ``--width`` a figure width in inches on every
    command that has them (train's mask source and backbone width have their own names)."""
    helps = {
        name: options_of(cmd)[flag].help
        for name, cmd in COMMANDS.items()
        if flag in options_of(cmd)
    }
    assert len(helps) >= 2
    assert len(set(helps.values())) == 1, helps
