"""The command line: a thin layer over the Python API, one module per command group.

Usage errors (an unknown option, a missing argument) print the usage line and exit 2;
other errors print one line (``error: ...``) and exit 1, and ``--debug`` (anywhere on the
command line) shows their traceback too.
"""

from convlens.cli import (  # noqa: F401  (registers commands)
    concepts,
    evaluate,
    explain,
    features,
    models,
    report,
    scan,
    serve,
    train,
    training_analysis,
)
from convlens.cli.app import app, main, reflow_help

reflow_help(app)  # docstring paragraphs on one line: the terminal wraps them once

__all__ = ["app", "main"]
