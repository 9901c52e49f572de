"""``python -m lightning_marl benchmark SUITE``: run a suite of methods × datasets × seeds.

    python -m lightning_marl benchmark small --jobs 2                 # a shipped suite by name
    python -m lightning_marl benchmark my_suite.yaml --out runs/cmp   # or any suite file
    python -m lightning_marl benchmark small --dry-run                # list the runs, train nothing

Re-running the same command resumes: finished runs are skipped. See docs/reproducing.md.
"""

from __future__ import annotations

import argparse


def cmd_benchmark(args) -> int:
    from pathlib import Path

    from lightning_marl.benchmarking import load_suite, plan_runs, run_suite, select

    suite = select(load_suite(args.suite), methods=args.methods, datasets=args.datasets, seeds=args.seeds,
                   scale=args.scale)
    out = Path(args.out or Path("runs") / "benchmarks" / suite.name)
    if args.dry_run:
        plan = plan_runs(suite, out)
        for spec in plan.runs:
            print(f"{spec.key:<48} {spec.run_dir}\n    {' '.join(spec.overrides)}")
        for (dataset, method), why in plan.unsupported.items():
            print(f"not run: {dataset}/{method} ({why})")
        for dataset, why in plan.missing.items():
            print(f"missing: {dataset} ({why})")
        print(f"{len(plan.runs)} runs")
        return 0
    outputs = run_suite(suite, out, jobs=args.jobs)
    print()
    print(outputs["markdown"], end="")
    print(f"\nwritten: {out}/results.md, results.csv, results.json" +
          (f", {', '.join(str(out / p) for p in outputs['curves'].values())}" if outputs["curves"] else ""))
    failed = [r for r in outputs["rows"] if r["status"] != "finished"]
    return 1 if failed else 0


def add_commands(sub) -> None:
    parser = sub.add_parser("benchmark", help="run a suite of methods × datasets × seeds (resumable)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="suite YAML file, or a shipped suite name (small, full)")
    parser.add_argument("--out", help="output directory (default runs/benchmarks/<suite name>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, each in a spawned process")
    parser.add_argument("--seeds", type=int, help="use seeds 0..N-1 instead of the suite's")
    parser.add_argument("--methods", nargs="+", help="only these methods (labels in the suite)")
    parser.add_argument("--datasets", nargs="+", help="only these datasets (names in the suite)")
    parser.add_argument("--scale", type=float, help="multiply every budget's steps and eval period (quick looks)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their overrides, train nothing")
    parser.set_defaults(func=cmd_benchmark)
