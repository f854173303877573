"""One module per benchmark of `tools/benchmark.py`; `common` holds what they share.

A benchmark module has a docstring (its description in `--help`) and exposes:

    HELP: str                                   # one line for the list of subcommands
    add_arguments(parser: ArgumentParser) -> None  # its options, on the subcommand's parser
    run(args: Namespace) -> None                # measure and print; raise SystemExit when outputs disagree

and is registered by one line in `BENCHMARKS` of `tools/benchmark.py`.
"""
