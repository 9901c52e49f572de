"""Reproducible comparisons: a suite of methods × datasets × seeds × budget, run and reported.

    python -m lightning_marl benchmark small --jobs 2        # the shipped small suite
    python -m lightning_marl report runs/benchmarks/small    # tables and curves again, no training

``suite`` reads and validates suite YAML files, ``runner`` runs them (resumable, one retry per
broken run, spawned processes with ``--jobs``), ``results`` writes CSV, JSON, markdown tables and
learning curves from what the runs stored. See docs/reproducing.md.

Example:
    >>> from lightning_marl.benchmarking import load_suite
    >>> suite = load_suite("small")
    >>> [d.name for d in suite.datasets]
    ['vmas_navigation', 'climbing_coordinated']
"""

from lightning_marl.benchmarking.results import write_outputs
from lightning_marl.benchmarking.runner import plan_runs, run_suite
from lightning_marl.benchmarking.suite import Budget, Suite, load_suite, select, suite_from_dict

__all__ = ["Budget", "Suite", "load_suite", "plan_runs", "run_suite", "select", "suite_from_dict", "write_outputs"]
