"""``dhkd benchmark``: batch-1 latency, throughput, map agreement and ratios to the peers in one run."""
from __future__ import annotations

NAME = "benchmark"
HELP = "time DHKD against EfficientAD-M and the reference path (latency, throughput, map agreement)"


def add_arguments(parser) -> None:
    """Add the ``dhkd benchmark`` options to ``parser``."""
    from dhkd.benchmark.config import add_arguments as add

    add(parser)


def run(args) -> int:
    """Run ``dhkd benchmark``; returns the exit status."""
    from dhkd.benchmark.latency import main

    return main(args)
