"""A comparison from Python: a suite built in code, run resumably, its table printed.

    python examples/benchmark_suite.py                      # BC vs OMIGA on the climbing game, 3 seeds
    python examples/benchmark_suite.py --seeds 5 --jobs 2   # 5 seeds, two runs at a time

The same as ``python -m lightning_marl benchmark SUITE.yaml`` with the suite as a dict; run it twice
and the second run skips every finished run. ``python -m lightning_marl report OUT`` rewrites the
tables and curves from the stored runs. See docs/reproducing.md.
"""

from __future__ import annotations

import argparse

from lightning_marl.benchmarking import run_suite, suite_from_dict


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="runs/example-benchmark")
    args = parser.parse_args(argv)

    suite = suite_from_dict({
        "name": "example",
        "seeds": args.seeds,
        "budget": {"steps": args.steps, "eval_every": max(1, args.steps // 5), "eval_episodes": 8},
        "overrides": ["algorithm.hidden=[64,64]", "env.num_envs=8", "logger=csv"],
        "methods": ["bc", "omiga"],
        "datasets": [{"recipe": "climbing_coordinated",
                      "method_overrides": {"omiga": ["algorithm.alpha=1.0", "algorithm.mixer_hidden=32"]}}],
    })
    outputs = run_suite(suite, args.out, jobs=args.jobs)
    print(outputs["markdown"])
    return outputs


if __name__ == "__main__":
    main()
