"""Train every method on one small dataset per action type and print a table of final scores.

    python benchmarks/zoo.py                      # 3 seeds, the default budgets below
    python benchmarks/zoo.py --seeds 1 --scale 0.2 --methods bc omiga

Datasets are the built-in recipes (built on first use): ``vmas_navigation`` (continuous, 3
agents, mixed quality) and ``climbing_coordinated`` (discrete, the optimum a 25 % minority).
Protocol (METHODS.md §6): the FINAL policy's mean return over ``eval.episodes`` episodes,
normalised with the dataset's reference returns, mean ± std over seeds; the best evaluation is
also reported. Every run keeps its run directory under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from lightning_marl import registry
from lightning_marl.config import load_config
from lightning_marl.run import fit

TASKS = {
    "vmas_navigation": {
        "kind": "continuous",
        "steps": 5000,
        "overrides": ["eval.episodes=32", "eval.every=2500", "log_every=500", "checkpoint_every=5000"],
    },
    "climbing_coordinated": {
        "kind": "discrete",
        "steps": 1000,
        "overrides": ["algorithm.hidden=[64,64]", "eval.episodes=8", "log_every=200", "checkpoint_every=1000"],
    },
}
# Per-method settings for the small tasks (everything else: the method's defaults).
METHOD_OVERRIDES = {
    "omiga": {"climbing_coordinated": ["algorithm.alpha=1.0", "algorithm.mixer_hidden=32"]},
}


def run_one(method: str, task: str, seed: int, scale: float, out: Path) -> dict:
    spec = TASKS[task]
    steps = max(1, int(spec["steps"] * scale))
    run_dir = out / f"{method}-{task}-seed{seed}"
    overrides = [
        f"algorithm.name={method}", f"algorithm.steps={steps}", f"data.recipe={task}", "env={name: dataset}",
        f"seed={seed}", f"run_dir={run_dir}", "progress=false", *spec["overrides"],
        *METHOD_OVERRIDES.get(method, {}).get(task, []),
    ]
    summary = fit(load_config(None, overrides))
    return {
        "method": method, "task": task, "seed": seed, "steps": steps,
        "final_return": summary["final"]["return_mean"], "final_score": summary["final"]["normalised_score"],
        "best_score": summary["best"]["normalised_score"], "grad_steps_per_s": summary["grad_steps_per_s"],
    }


def table(results: list[dict]) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in results))
    methods = list(dict.fromkeys(r["method"] for r in results))
    lines = ["| method | " + " | ".join(f"{t} final | {t} best" for t in tasks) + " |",
             "|---|" + "---|---|" * len(tasks)]
    for method in methods:
        cells = []
        for task in tasks:
            rows = [r for r in results if r["method"] == method and r["task"] == task]
            if not rows:
                cells += ["n/a", "n/a"]
                continue
            for key in ("final_score", "best_score"):
                values = [r[key] for r in rows]
                std = statistics.pstdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.1f} ± {std:.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--out", default="runs/zoo")
    args = parser.parse_args()
    out = Path(args.out)
    results = []
    began = time.time()
    for task in args.tasks:
        kind = TASKS[task]["kind"]
        for entry in registry.entries("algorithm"):
            if (args.methods and entry.name not in args.methods) or kind not in entry.obj.supports:
                continue
            for seed in range(args.seeds):
                results.append(run_one(entry.name, task, seed, args.scale, out))
                print(json.dumps(results[-1]), flush=True)
    print(f"\nfinal and best normalised score, mean ± std over {args.seeds} seeds "
          f"(final policy, protocol of METHODS.md §6); {time.time() - began:.0f} s\n")
    print(table(results))
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
