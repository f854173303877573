#!/usr/bin/env python
"""Speed benchmarks. Every one times detlib and its peer in the same process, checks their outputs agree and
prints the ratio.

    python tools/benchmark.py ops [--quick] [--device cpu|cuda] [--repeats N]
    python tools/benchmark.py eval [--images N] [--segm-images N] [--keypoints-images N] [--repeats N]
    python tools/benchmark.py model [--device cpu|cuda] [--quick] [--repeats N] [--threads N] [--opts KEY VALUE ...]
    python tools/benchmark.py export --config-file CFG --image IMG [--repeats N] [KEY VALUE ...]
    python tools/benchmark.py deform [--device cpu|cuda] [--batch N ...] [--repeats N]
    python tools/benchmark.py data [--images N] [--batches N] [--workers N ...] [--repeats N] [--mask-format F]

`python tools/benchmark.py SUBCOMMAND --help` describes each. Each benchmark is a module of tools/benchmarks/
(tools/benchmarks/__init__.py gives the interface), registered by one line in BENCHMARKS below.
"""

import argparse
import importlib
import os
import sys

# The benchmarks package sits next to this script; `python tools/benchmark.py` puts tools/ on the path, an import
# of this file from elsewhere (the tests) may not.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# subcommand -> module under tools/benchmarks/, in the order `--help` lists them.
BENCHMARKS = {
    "ops": "benchmarks.ops",
    "eval": "benchmarks.evaluation",
    "model": "benchmarks.model",
    "export": "benchmarks.export",
    "deform": "benchmarks.deform_conv",
    "data": "benchmarks.data_loading",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands = parser.add_subparsers(dest="subcommand", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        sub = subcommands.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
