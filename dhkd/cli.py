"""The ``dhkd`` command line: one sub-command per module in :mod:`dhkd.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dhkd", description="DHKD industrial anomaly detection")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(name)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
