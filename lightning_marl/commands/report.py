"""``python -m lightning_marl report SUITE_OUT``: tables and curves again from stored results.

    python -m lightning_marl report runs/benchmarks/small

Rewrites SUITE_OUT/results.md, results.csv, results.json and curves/*.png from the runs'
eval.json files (nothing is trained) and prints the markdown tables.
"""

from __future__ import annotations

import argparse


def cmd_report(args) -> int:
    from lightning_marl.benchmarking import write_outputs

    outputs = write_outputs(args.out, plots=not args.no_plots)
    print(outputs["markdown"], end="")
    return 0


def add_commands(sub) -> None:
    parser = sub.add_parser("report", help="regenerate a benchmark's tables and curves from its stored runs",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the benchmark's output directory (SUITE_OUT)")
    parser.add_argument("--no-plots", action="store_true", help="skip the learning-curve PNGs")
    parser.set_defaults(func=cmd_report)
