"""The ``dhkd`` command line: one sub-command per module in :mod:`dhkd.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, and imports
nothing heavy at module level: ``dhkd --help`` and ``dhkd --version`` never import torch, and only the chosen
command's arguments are built. Data, model and file errors print one line (``error: ...``) and exit with
status 2; ``--debug`` or ``DHKD_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from dhkd import __version__
from dhkd.denormals import flush_denormals

COMMANDS = [
    "dhkd.commands.demo",
    "dhkd.commands.train",
    "dhkd.commands.predict",
    "dhkd.commands.info",
    "dhkd.commands.distill_teacher",
    "dhkd.commands.evaluate",
    "dhkd.commands.benchmark",
    "dhkd.commands.export",
]
# Exceptions that describe a problem with the user's data, files, model or settings (one line, exit 2).
USER_ERRORS = (ValueError, OSError, FloatingPointError)
EXIT_USER_ERROR = 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default to show and the help does not name it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] \
                or "default" in text or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _modules() -> dict:
    mods = [importlib.import_module(name) for name in COMMANDS]
    return {m.NAME: m for m in mods}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own arguments are added (None: none, e.g. for ``dhkd --help``)."""
    parser = argparse.ArgumentParser(prog="dhkd", description="DHKD industrial anomaly detection",
                                     epilog="Run `dhkd COMMAND --help` for a command's options. Exit status: 0 "
                                            "success, 1 some inputs failed (predict), 2 bad input or settings, "
                                            "130 interrupted.")
    parser.add_argument("--version", action="version", version=f"dhkd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors (also DHKD_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, mod in _modules().items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, formatter_class=HelpFormatter)
        if name == command:
            mod.add_arguments(p)
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show the full traceback of errors (also DHKD_DEBUG=1)")
        p.set_defaults(_run=mod.run)
    return parser


def _command(argv: list[str]) -> str | None:
    names = set(_modules())
    return next((a for a in argv if a in names), None)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    debug = args.debug or os.environ.get("DHKD_DEBUG", "") not in ("", "0")
    flush_denormals()  # before any parallel work, so that every thread the command starts inherits it
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"dhkd {args.command}: error: {exc}\n(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"dhkd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
