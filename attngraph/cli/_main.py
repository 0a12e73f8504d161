"""The argument parser built from the command registry, and `main`: one place that turns user
mistakes into one `error:` line (exit 2) and Ctrl-C into one line (exit 130)."""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from .._errors import AttnGraphError
from ..runtime import set_log_severity
from ._common import ArgumentParser, CLIError, one_line, set_verbosity

# The commands, in the order `attngraph --help` lists them. Each is a module of this package
# defining HELP (one line), EXAMPLE (a command line, shown by --help), add_arguments(parser)
# and run(args) -> exit status. Adding a command
# is adding its module and its name here.
COMMANDS = (
    "export",
    "summary",
    "validate",
    "analyze",
    "run",
    "generate",
    "stream",
    "serve",
)

DESCRIPTION = """\
Describe attention models in Python, check them against the numpy reference, export them to
ONNX with fused attention, and run them with onnxruntime.

A model file is a Python file; FILE.py:NAME names a module-level ag.Model, a tuple
(model, params), a dict with keys 'model' (and optionally 'params'), or a function of no
arguments returning one of these. Without :NAME the CLI tries 'build', then 'model'.

Exit status: 0 ok, 1 a validation failed, 2 a mistake in the input (one 'error:' line on
stderr), 130 interrupted (Ctrl-C)."""


def command_module(name: str) -> ModuleType:
    """The module implementing the command `name`."""
    return importlib.import_module(f"{__package__}.{name}")


def build_parser() -> argparse.ArgumentParser:
    """The `attngraph` argument parser with one sub-command per registered module."""
    examples = "\n".join(f"  attngraph {command_module(n).EXAMPLE}" for n in COMMANDS)
    parser = ArgumentParser(prog="attngraph", description=f"{DESCRIPTION}\n\nExamples:\n"
                            f"{examples}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"attngraph {__version__}")
    _verbosity_flags(parser, False)
    # The same flags after the command (attngraph run m.onnx -q); SUPPRESS keeps a flag given
    # before the command from being reset by the sub-parser's default.
    common = ArgumentParser(add_help=False)
    _verbosity_flags(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")
    for name in COMMANDS:
        module = command_module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP[:1].upper()
                           + module.HELP[1:] + ".", parents=[common])
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def _verbosity_flags(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="more on stderr: onnxruntime's warnings, tracebacks of errors")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="results only: no progress, timing or other lines on stderr")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 validation failed, 2 mistake,
    130 interrupted)."""
    if sys.stdout is sys.__stdout__ and isinstance(sys.stdout, io.TextIOWrapper):
        # each line as it is printed, into a pipe too: `attngraph run ... | tee` shows the
        # feeds line before a long timing loop, not at the end
        sys.stdout.reconfigure(line_buffering=True)
    set_verbosity(1)
    verbose = False
    try:
        args = build_parser().parse_args(argv)
        verbose = bool(args.verbose)
        set_verbosity(0 if args.quiet else 2 if verbose else 1)
        if verbose:
            set_log_severity(2)  # onnxruntime's own warnings too
        return int(args.handler(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except (CLIError, AttnGraphError) as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # the reader went away (attngraph generate ... | head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    finally:
        set_verbosity(1)
        if verbose:
            set_log_severity(4)
