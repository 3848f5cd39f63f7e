"""The ``convlens`` Typer app, the options every command shares, error reporting and `main`.

Usage errors (an unknown option, a missing argument) print the usage line and exit 2;
a ``--device`` this machine lacks prints one line and exits 2; other errors print one
line (``error: ...``) and exit 1, and ``--debug`` (anywhere on the
command line) shows their traceback too. IMAGE arguments take files, directories (every
image inside) or sample names (``cat``).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from convlens.errors import ConvlensError, DeviceError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="See what a convolutional network learned and why it decided.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Model name or path (see 'convlens models').")
]
# metavar "": a flag takes no value, and help says so (typer's rich help writes ``<bool>``)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _check_device(value: str | None) -> str | None:
    """Validate ``--device`` before the command runs (a missing device: `DeviceError`,
    which `main` reports in one line with exit status 2)."""
    if value is None or value.strip().lower() == "cpu":  # nothing to check, no torch import
        return value
    from convlens.models.devices import resolve_device

    resolve_device(value)
    return value


DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where to run: cpu, cuda, cuda:N, mps, or auto (CUDA, else MPS, else CPU).",
        callback=_check_device,
    ),
]


def _check_images(values: list[str] | None) -> list[str] | None:
    """``--json false`` reads ``false`` as an image: a flag takes no value, so a ``true`` or
    ``false`` that is no file is a usage error saying so."""
    from pathlib import Path

    for value in values or []:
        if value.lower() in ("true", "false") and not Path(value).exists():
            raise typer.BadParameter(
                f"{value!r} is not an image; flags such as --json take no value "
                f"(write --json, not --json {value})"
            )
    return values


ImagesArgument = Annotated[
    list[str],
    typer.Argument(
        help="Image files, directories, or sample names (" + "cat, coffee, ...).",
        callback=_check_images,
    ),
]


def _print_version(value: bool) -> None:
    if value:
        from convlens.package import version

        typer.echo(f"convlens {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """convlens: filters, feature maps, saliency, CAMs, boxes and metrics for CNNs."""


def reflow_help(typer_app: typer.Typer) -> None:
    """Give every command of ``typer_app`` (and of its sub-apps) its docstring with each
    paragraph on one line, as its help. Typer's rich help keeps the single line breaks of
    a docstring, so a paragraph wrapped at 90 columns in the source was wrapped a second
    time by the terminal, breaking lines mid-sentence; now the terminal wraps it once.
    Paragraphs starting with ``\\b`` (click's "keep as is" mark) are left alone."""
    for info in typer_app.registered_commands:
        text = info.help or (info.callback.__doc__ if info.callback else None)
        if text:
            info.help = _one_line_paragraphs(text)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


def _one_line_paragraphs(text: str) -> str:
    help_text = inspect.cleandoc(text).partition("\f")[0]  # after \f: not help
    paragraphs = help_text.split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _echo_json(value) -> None:
    typer.echo(json.dumps(value, indent=2))


SHOWN_SKIPPED = 5


def _report_skipped(errors: Sequence[tuple[str, str]]) -> None:
    """The one report of unreadable inputs, for every command that reads images: a line
    ``skipped SOURCE: reason`` on stderr for each of the first few, then a count of the
    rest. The command goes on with the other inputs and exits with status 1."""
    for source, message in errors[:SHOWN_SKIPPED]:
        typer.echo(f"skipped {source}: {message.removeprefix(f'{source}: ')}", err=True)
    if len(errors) > SHOWN_SKIPPED:
        typer.echo(f"skipped {len(errors) - SHOWN_SKIPPED} more unreadable file(s)", err=True)


def _report_failure(what: str | None, error: BaseException, debug: bool) -> None:
    """One line on stderr (``error: [WHAT: ]message``); with ``--debug`` the traceback first."""
    if debug:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    prefix = f"{what}: " if what else ""
    typer.echo(f"error: {prefix}{_error_text(error)}", err=True)


def _error_text(error: BaseException) -> str:
    """A convlens error's own message (it names the fix); other errors with their type."""
    if isinstance(error, ConvlensError):
        return _one_line(error)
    return f"{type(error).__name__}: {_one_line(error)} (run with --debug for the traceback)"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``convlens`` console script; returns the exit status."""
    argv, debug = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    command = click_command()
    try:
        code = command.main(args=argv, prog_name="convlens", standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except typer.TyperException as error:  # usage errors (exit 2) and other CLI errors
        error.show()
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except DeviceError as error:  # a --device this machine lacks: a usage error, one line
        _report_failure(None, error, debug)
        return 2
    except Exception as error:  # convlens errors, and anything else (a model that fails...)
        _report_failure(None, error, debug)
        return 1
    return code if isinstance(code, int) else 0


_BUILT: dict[tuple, object] = {}


def click_command():
    """`app` as the click command `main` runs (flags shown plain: `_plain_flags`), built once
    per process and set of registered commands. Typer rebuilds it on every call, reading
    every command's type hints (about 0.1 s of CPU), which in-process callers that run many
    commands (a notebook, the test suite) paid on each one; click commands keep no state
    from one invocation to the next, so the built one is reused until a command is added,
    removed or given other help."""
    key = _registered(app)
    command = _BUILT.get(key)
    if command is None:
        command = typer.main.get_command(app)
        _plain_flags(command)
        _BUILT.clear()
        _BUILT[key] = command
    return command


def _registered(typer_app: typer.Typer) -> tuple:
    """What `click_command` is built from: the root callback, each command's name, callback
    and help, and each sub-app's, recursively (equal while nothing was registered)."""
    commands = tuple(
        (info.name, id(info.callback), info.help) for info in typer_app.registered_commands
    )
    groups = tuple(
        (group.name, id(group.typer_instance), _registered(group.typer_instance))
        for group in typer_app.registered_groups
        if group.typer_instance is not None
    )
    root = typer_app.registered_callback
    return id(root.callback) if root is not None else None, commands, groups


def _plain_flags(command) -> None:
    """Every on/off flag of ``command`` and its sub-commands shows no value type in help:
    typer's help prints ``<bool>`` beside flags, which reads as if ``--resume false`` were
    accepted (it is taken as the next argument instead)."""
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _plain_flags(sub)


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` may sit anywhere before a ``--``; it is moved to the front, where the
    root option is parsed."""
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    debug = len(rest) != len(argv)
    return (["--debug"] + rest if debug else rest), debug
