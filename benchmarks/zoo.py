"""Train every method on one small dataset per action type and print a table of final scores.

    python benchmarks/zoo.py                      # 3 seeds, the default budgets below
    python benchmarks/zoo.py --seeds 1 --scale 0.2 --methods bc omiga --jobs 2

Datasets are the built-in recipes (built on first use): ``vmas_navigation`` (continuous, 3
agents, mixed quality) and ``climbing_coordinated`` (discrete, the optimum a 25 % minority).
It is a benchmark suite built in code (lightning_marl.benchmarking): every registered method on
the datasets whose action kind it supports, run resumably under ``--out`` (rerunning skips the
finished runs; ``python -m lightning_marl report OUT`` rewrites the tables), with the evaluation
protocol of ``python -m lightning_marl benchmark``: the FINAL policy's mean return over
``eval_episodes`` episodes, normalised with the dataset's reference returns, mean ± std over
seeds; the best evaluation is also reported. The shipped ``small`` suite is the curated version.
"""

from __future__ import annotations

import argparse
import time

from lightning_marl import registry
from lightning_marl.benchmarking import run_suite, select, suite_from_dict

DATASETS = [
    {"recipe": "vmas_navigation", "budget": {"steps": 5000, "eval_every": 2500, "eval_episodes": 32},
     "overrides": ["log_every=500", "checkpoint_every=5000"]},
    {"recipe": "climbing_coordinated", "budget": {"steps": 1000, "eval_every": 0, "eval_episodes": 8},
     "overrides": ["algorithm.hidden=[64,64]", "log_every=200", "checkpoint_every=1000"],
     # Per-method settings for the small tasks (everything else: the method's defaults).
     "method_overrides": {"omiga": ["algorithm.alpha=1.0", "algorithm.mixer_hidden=32"]}},
]


def zoo_suite(seeds: int, methods: list[str] | None = None):
    """The zoo as a suite: every registered method (or ``methods``) on both built-in datasets."""
    names = methods or [entry.name for entry in registry.entries("algorithm")]
    datasets = [dict(d, method_overrides={k: v for k, v in d.get("method_overrides", {}).items() if k in names})
                for d in DATASETS]
    return suite_from_dict({"name": "zoo", "seeds": seeds, "overrides": ["progress=false"], "methods": names,
                            "datasets": datasets})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--tasks", nargs="*", default=[d["recipe"] for d in DATASETS])
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (spawned processes)")
    parser.add_argument("--out", default="runs/zoo")
    args = parser.parse_args()
    suite = select(zoo_suite(args.seeds, args.methods), datasets=args.tasks,
                   scale=None if args.scale == 1.0 else args.scale)
    began = time.time()
    outputs = run_suite(suite, args.out, jobs=args.jobs)
    print(f"\n{time.time() - began:.0f} s\n")
    print(outputs["markdown"])


if __name__ == "__main__":
    main()
