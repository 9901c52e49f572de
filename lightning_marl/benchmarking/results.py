"""Results of a suite, read back from its output directory: CSV, JSON, a markdown table, curves.

Everything here reads only what the runs stored (OUT/plan.json, and per run eval.json,
config.yaml and benchmark.json), so ``python -m lightning_marl report OUT`` regenerates the same
files without training anything::

    OUT/results.csv      one row per run (status, final/best return and normalised score, ...)
    OUT/results.json     the same rows, the per method × dataset summary and the protocol
    OUT/results.md       the tables: final and best score, mean ± std over seeds, best per row in bold
    OUT/curves/<dataset>.png   learning curves: mean over seeds with a ±std band

Example:
    >>> cell_text({"mean": 85.04, "std": 1.2, "n": 3, "expected": 3})
    '85.0 ± 1.2'
    >>> cell_text({"mean": 85.04, "std": 0.0, "n": 1, "expected": 3})
    '85.0 ± 0.0 (1/3 seeds)'
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import yaml

from lightning_marl.benchmarking.runner import SUITE_FILE, is_finished, read_state, run_dir_of
from lightning_marl.errors import ConfigError
from lightning_marl.utils import atomic_write_json, atomic_write_text

COLUMNS = ("dataset", "method", "algorithm", "seed", "status", "iterations", "final_return", "final_return_std",
           "final_normalised", "best_return", "best_normalised", "best_iteration", "eval_episodes", "eval_seed",
           "final_win_rate", "grad_steps_per_s", "train_seconds", "cpu_seconds", "attempts", "error", "run_dir", "protocol")
PROTOCOL = (
    "Evaluation protocol: every run trains for its dataset's budget of iterations; its FINAL policy "
    "(decentralised actors, deterministic actions) is evaluated over a fixed number of episodes in the "
    "dataset's environment with a fixed evaluation seed, and the best of the periodic evaluations is also "
    "reported. Normalised score = 100·(R − R_random)/(R_expert − R_random), the reference returns stored "
    "in the dataset's metadata (raw returns where a dataset has none). Tables give the mean ± standard "
    "deviation (population, ddof 0) over seeds of each run's mean episode return's score."
)


def load_plan(out: Path) -> dict:
    path = Path(out) / "plan.json"
    if not path.exists():
        raise ConfigError(f"{out} is not a benchmark output directory: no plan.json (made by "
                          "`python -m lightning_marl benchmark SUITE.yaml --out DIR`)")
    return json.loads(path.read_text())


def load_stored_suite(out: Path) -> dict:
    path = Path(out) / SUITE_FILE
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def dataset_protocol(suite: dict, dataset: str, rows: list[dict]) -> str:
    """One line: the budget and evaluation of a dataset's runs."""
    entry = next((d for d in suite.get("datasets", []) if d["name"] == dataset), None)
    seeds = sorted({r["eval_seed"] for r in rows if r["eval_seed"] is not None})
    parts = []
    if entry:
        b = entry["budget"]
        every = f"every {b['eval_every']} iterations and at the end" if b["eval_every"] else "at the end"
        parts.append(f"{b['steps']} iterations, evaluated {every} over {b['eval_episodes']} episodes")
    if seeds:
        parts.append(f"evaluation seed {', '.join(map(str, seeds))}")
    parts.append(f"training seeds {', '.join(str(s) for s in sorted({r['seed'] for r in rows}))}")
    return f"{dataset}: " + "; ".join(parts)


def collect_rows(out: Path) -> list[dict]:
    """One row per planned run, whatever its state (finished, failed, interrupted, pending)."""
    out = Path(out)
    plan = load_plan(out)
    rows = []
    for run in plan["runs"]:
        run_dir = run_dir_of(out, run["dataset"], run["method"], run["seed"])
        stored = _read_json(run_dir / "eval.json")
        state = read_state(run_dir)
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
        if is_finished(run_dir, run["steps"]):
            status = "finished"
        else:
            status = {"failed": "failed", "interrupted": "interrupted", "running": "incomplete",
                      "retrying": "incomplete"}.get(state.get("state"), "pending")
        final, best = stored.get("final") or {}, stored.get("best") or {}
        finished = status == "finished"
        rows.append({
            "dataset": run["dataset"], "method": run["method"],
            "algorithm": (config.get("algorithm") or {}).get("name"), "seed": run["seed"], "status": status,
            "iterations": stored.get("iteration"),
            "final_return": final.get("return_mean") if finished else None,
            "final_return_std": final.get("return_std") if finished else None,
            "final_normalised": final.get("normalised_score") if finished else None,
            "best_return": best.get("return_mean") if finished else None,
            "best_normalised": best.get("normalised_score") if finished else None,
            "best_iteration": best.get("iteration") if finished else None,
            "eval_episodes": final.get("episodes"), "eval_seed": (config.get("eval") or {}).get("seed"),
            "final_win_rate": final.get("win_rate") if finished else None,
            "grad_steps_per_s": stored.get("grad_steps_per_s"), "train_seconds": stored.get("train_seconds"),
            "cpu_seconds": state.get("cpu_seconds"), "attempts": state.get("attempts"), "error": None if finished else state.get("error"),
            "run_dir": str(run_dir.relative_to(out)), "history": (stored.get("history") or []) if finished else [],
        })
    suite = load_stored_suite(out)
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        line = dataset_protocol(suite, dataset, [r for r in rows if r["dataset"] == dataset])
        for row in rows:
            if row["dataset"] == dataset:
                row["protocol"] = line
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def metric_of(rows: list[dict]) -> str:
    """"normalised" if every finished run of these rows has a normalised score, else "return"."""
    done = [r for r in rows if r["status"] == "finished"]
    return "normalised" if done and all(r["final_normalised"] is not None for r in done) else "return"


def summarise(rows: list[dict], datasets: list[str], methods: list[str]) -> list[dict]:
    """Per dataset × method: mean and std over finished seeds of the final and best score."""
    cells = []
    for dataset in datasets:
        of_dataset = [r for r in rows if r["dataset"] == dataset]
        metric = metric_of(of_dataset)
        for method in methods:
            runs = [r for r in of_dataset if r["method"] == method]
            if not runs:
                continue
            done = [r for r in runs if r["status"] == "finished"]
            cell = {"dataset": dataset, "method": method, "metric": metric, "n": len(done), "expected": len(runs),
                    "failed": sum(r["status"] == "failed" for r in runs)}
            for which in ("final", "best"):
                values = [r[f"{which}_{metric}"] for r in done if r[f"{which}_{metric}"] is not None]
                mean, std = _mean_std(values) if values else (None, None)
                cell[f"{which}_mean"], cell[f"{which}_std"] = mean, std
            cells.append(cell)
    return cells


def cell_text(cell: dict | None, which: str | None = None) -> str:
    if cell is None:
        return "n/a"
    mean = cell["mean"] if which is None else cell[f"{which}_mean"]
    std = cell["std"] if which is None else cell[f"{which}_std"]
    if mean is None:
        if cell.get("failed"):
            return f"failed ({cell['failed']}/{cell['expected']} seeds)"
        return "not run"
    text = f"{mean:.1f} ± {std:.1f}"
    if cell["n"] < cell["expected"]:
        text += f" ({cell['n']}/{cell['expected']} seeds)"
    return text


def markdown_table(cells: list[dict], datasets: list[str], methods: list[str], which: str,
                   missing: dict | None = None) -> str:
    """Rows = datasets, columns = methods; the best mean of each row in bold (all of a tie)."""
    lines = ["| dataset | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for dataset in datasets:
        if missing and dataset in missing:
            lines.append(f"| {dataset} | " + " | ".join("missing" for _ in methods) + " |")
            continue
        row = {c["method"]: c for c in cells if c["dataset"] == dataset}
        shown = {m: f"{row[m][f'{which}_mean']:.1f}" for m in methods if m in row and row[m][f"{which}_mean"] is not None}
        top = max(shown.values(), key=float) if shown else None
        texts = []
        for method in methods:
            text = cell_text(row.get(method), which)
            if top is not None and shown.get(method) == top:
                text = f"**{text}**"
            texts.append(text)
        metric = row[next(iter(row))]["metric"] if row else "normalised"
        lines.append(f"| {dataset}{'' if metric == 'normalised' else ' (return)'} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _order(plan: dict, suite: dict) -> tuple[list[str], list[str]]:
    datasets = [d["name"] for d in suite.get("datasets", [])] or list(dict.fromkeys(r["dataset"] for r in plan["runs"]))
    methods = [m["label"] for m in suite.get("methods", [])] or list(dict.fromkeys(r["method"] for r in plan["runs"]))
    return datasets, methods


def markdown_report(out: Path, rows: list[dict], cells: list[dict], curves: dict[str, str]) -> str:
    plan, suite = load_plan(out), load_stored_suite(out)
    datasets, methods = _order(plan, suite)
    protocol_lines = list(dict.fromkeys(r["protocol"] for r in rows))
    parts = [
        f"# Benchmark results: suite `{suite.get('name', Path(out).name)}`", "",
        PROTOCOL, "", "Budgets and seeds per dataset:", "", *[f"- {line}" for line in protocol_lines], "",
        "## Final policy: normalised score, mean ± std over seeds (best of each row in bold)", "",
        markdown_table(cells, datasets, methods, "final", plan.get("missing")), "",
        "## Best evaluation during training: normalised score, mean ± std over seeds", "",
        markdown_table(cells, datasets, methods, "best", plan.get("missing")), "",
        "n/a: the method does not support the dataset's action kind; (k/n seeds): only k of n runs "
        "finished; (return): the dataset has no reference returns, so raw returns are shown.",
    ]
    if plan.get("missing"):
        parts += ["", "Missing datasets (their runs were not started):", ""]
        parts += [f"- {name}: {why}" for name, why in plan["missing"].items()]
    failed = [r for r in rows if r["status"] != "finished"]
    if failed:
        parts += ["", "## Runs that did not finish", ""]
        parts += [f"- {r['run_dir']}: {r['status']}" + (f" after {r['attempts']} attempts" if r["attempts"] else "")
                  + (f": {r['error']}" if r["error"] else "") for r in failed]
    if curves:
        parts += ["", "## Learning curves", ""]
        parts += [f"![{dataset}]({path})" for dataset, path in curves.items()]
    return "\n".join(parts) + "\n"


def plot_curves(out: Path, rows: list[dict], datasets: list[str], methods: list[str]) -> dict[str, str]:
    """curves/<dataset>.png: per method the mean over seeds of the evaluated score, ±std shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    for dataset in datasets:
        of_dataset = [r for r in rows if r["dataset"] == dataset and r["history"]]
        if not of_dataset:
            continue
        metric = metric_of(of_dataset)
        key = "normalised_score" if metric == "normalised" else "return_mean"
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for method in methods:
            runs = [r for r in of_dataset if r["method"] == method]
            if not runs:
                continue
            by_iteration: dict[int, list[float]] = {}
            for run in runs:
                for entry in run["history"]:
                    if entry.get(key) is not None:
                        by_iteration.setdefault(entry["iteration"], []).append(entry[key])
            steps = sorted(by_iteration)
            stats = [_mean_std(by_iteration[s]) for s in steps]
            mean = [m for m, _ in stats]
            axes.plot(steps, mean, marker="o", markersize=3, label=f"{method} ({len(runs)} seeds)")
            axes.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2)
        axes.set_xlabel("training iteration")
        axes.set_ylabel("normalised score" if metric == "normalised" else "episode return")
        axes.set_title(f"{dataset}: evaluated policy, mean ± std over seeds", fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        episodes = sorted({r["eval_episodes"] for r in of_dataset if r["eval_episodes"]})
        figure.text(0.01, 0.01, f"each point: mean return over {', '.join(map(str, episodes))} evaluation episodes "
                    "of one seed's policy, then mean ± std over seeds", fontsize=7)
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        path = Path(out) / "curves" / f"{dataset}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, metadata={"Software": None})
        plt.close(figure)
        written[dataset] = f"curves/{dataset}.png"
    return written


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return buffer.getvalue()


def write_outputs(out, plots: bool = True) -> dict:
    """Write results.csv, results.json, results.md and curves/ from what the runs stored."""
    out = Path(out)
    plan, suite = load_plan(out), load_stored_suite(out)
    datasets, methods = _order(plan, suite)
    rows = collect_rows(out)
    cells = summarise(rows, datasets, methods)
    curves = plot_curves(out, rows, datasets, methods) if plots else {}
    markdown = markdown_report(out, rows, cells, curves)
    results = {
        "suite": suite.get("name"), "protocol": PROTOCOL,
        "datasets": {d: next((r["protocol"] for r in rows if r["dataset"] == d), None) for d in datasets},
        "summary": cells, "runs": rows, "missing": plan.get("missing", {}), "unsupported": plan.get("unsupported", []),
    }
    atomic_write_text(out / "results.csv", csv_text(rows))
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", markdown)
    return {"markdown": markdown, "results": results, "curves": curves, "rows": rows, "cells": cells}
