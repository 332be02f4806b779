"""Latency benchmark script: the same as ``dhkd benchmark`` (see docs/deployment.md).

    nice python benchmarks/latency.py --presets paper small --quick --shared-machine
"""
import argparse
import sys

from dhkd.benchmark.config import add_arguments
from dhkd.benchmark.latency import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
