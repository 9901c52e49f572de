"""Running a suite: plan the runs, skip finished ones, run the rest (in spawned processes with
``jobs > 1``), retry a broken run once, then write the results (see results.write_outputs).

Each run directory ``OUT/<dataset>/<method>/seed<k>`` holds what ``fit`` writes (config.yaml,
eval.json, logs/, checkpoints/, policy.pt) plus ``benchmark.json`` (the run's overrides, its
state, attempts and last error) and ``output.log`` (what the run printed, tracebacks included).

- A run is finished when its eval.json says it reached its budget uninterrupted; finished runs
  are skipped, so re-running the command resumes a suite.
- A run with a checkpoint but no finished eval.json (killed, Ctrl-C) continues from the
  checkpoint (``fit resume=RUN_DIR``); its earlier evaluations are kept in eval.json's history.
- A run that raises is retried once from scratch (its checkpoint removed, so a damaged one cannot
  fail the retry too), then recorded as failed; the suite goes on with the next run.
- Ctrl-C stops the current run at an iteration boundary (with a checkpoint) and the suite after it.

Example:
    >>> from lightning_marl.benchmarking import load_suite, run_suite   # doctest: +SKIP
    >>> run_suite(load_suite("small"), "runs/benchmarks/small", jobs=2)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from lightning_marl.benchmarking.suite import RunSpec, Suite, run_overrides, suite_yaml
from lightning_marl.errors import ConfigError
from lightning_marl.utils import atomic_write_json, atomic_write_text

ATTEMPTS = 2  # a broken run is tried twice in all (retried once)
STATE_FILE = "benchmark.json"
SUITE_FILE = "suite.yaml"


@dataclass
class Plan:
    """The runs of a suite, plus the method × dataset cells that are not runs and why."""

    runs: list[RunSpec] = field(default_factory=list)
    unsupported: dict[tuple[str, str], str] = field(default_factory=dict)  # (dataset, method) -> reason
    missing: dict[str, str] = field(default_factory=dict)  # dataset -> what to do


def run_dir_of(out: Path, dataset: str, method: str, seed: int) -> Path:
    return Path(out) / dataset / method / f"seed{seed}"


def dataset_kind(suite: Suite, entry) -> tuple[str | None, str | None]:
    """("continuous" | "discrete", None), or (None, why it is missing); builds a recipe if needed."""
    from lightning_marl.data.dataset import read_metadata

    if entry.recipe is not None:
        from lightning_marl.collect.recipes import ensure_recipe

        path = ensure_recipe(entry.recipe)
    else:
        path = suite.dataset_path(entry)
        if not (path / "metadata.json").exists():
            how = entry.make or "build or convert it first (docs/datasets.md)"
            return None, f"no dataset at {path}: {how}"
    spec = read_metadata(path)["spec"]
    return ("discrete" if spec["discrete"] else "continuous"), None


def plan_runs(suite: Suite, out: Path) -> Plan:
    """Expand the suite into runs; methods that do not support a dataset's actions are no runs."""
    from lightning_marl import registry

    plan = Plan()
    for entry in suite.datasets:
        kind, missing = dataset_kind(suite, entry)
        if missing:
            plan.missing[entry.name] = missing
            continue
        for method in suite.methods:
            if entry.methods is not None and method.label not in entry.methods:
                continue
            supports = registry.get("algorithm", method.algorithm).supports
            if kind not in supports:
                plan.unsupported[(entry.name, method.label)] = f"{method.algorithm} has no {kind} actions"
                continue
            for seed in suite.seeds:
                run_dir = run_dir_of(out, entry.name, method.label, seed)
                plan.runs.append(RunSpec(entry.name, method.label, seed, str(run_dir),
                                         run_overrides(suite, entry, method, seed, run_dir), entry.budget.steps))
    return plan


def _fingerprint(spec: RunSpec) -> list[str]:
    """What must not change for a stored run to count for this suite (the run dir may move)."""
    return [o for o in spec.overrides if not o.startswith("run_dir=")]


def read_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def is_finished(run_dir: Path, steps: int) -> bool:
    """eval.json written at the end of an uninterrupted run that reached ``steps`` iterations."""
    path = Path(run_dir) / "eval.json"
    if not path.exists():
        return False
    stored = json.loads(path.read_text())
    return stored.get("interrupted_at") is None and (stored.get("iteration") or 0) >= steps


def check_stored_runs(plan: Plan) -> None:
    """Refuse to mix results: a stored run made with other overrides than the suite's now."""
    for spec in plan.runs:
        stored = read_state(Path(spec.run_dir)).get("overrides")
        if stored is not None and stored != _fingerprint(spec):
            changed = sorted(set(stored) ^ set(_fingerprint(spec)))
            raise ConfigError(
                f"{spec.run_dir} was made with other settings than the suite now gives it (differences: "
                f"{', '.join(changed)}); use another --out directory or delete that run directory"
            )


def validate_configs(plan: Plan) -> None:
    """Load every run's config before any training: bad keys stop the suite at once."""
    from lightning_marl.config import load_config

    for spec in plan.runs:
        try:
            load_config(None, list(spec.overrides))
        except ConfigError as error:
            raise ConfigError(f"run {spec.key}: {error}") from None


def _merge_history(run_dir: Path, previous: list[dict]) -> None:
    """After a resumed run, put the evaluations made before the interruption back into eval.json."""
    path = run_dir / "eval.json"
    if not previous or not path.exists():
        return
    stored = json.loads(path.read_text())
    by_iteration = {e["iteration"]: e for e in previous + stored["history"]}
    stored["history"] = [by_iteration[k] for k in sorted(by_iteration)]
    if stored["history"]:
        stored["best"] = max(stored["history"], key=lambda e: e["return_mean"])
    atomic_write_json(path, stored)


def _clear(run_dir: Path) -> None:
    for name in ("checkpoints", "logs"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("eval.json", "policy.pt"):
        (run_dir / name).unlink(missing_ok=True)


def execute_run(spec: RunSpec, fresh: bool = False) -> dict:
    """Train one run (in this process); returns {"ok", "error", "seconds", "interrupted"}, never raises.

    ``fresh`` removes what an earlier attempt left; otherwise a checkpoint is resumed.
    """
    from lightning_marl.config import load_config
    from lightning_marl.run import fit

    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        _clear(run_dir)
    overrides = list(spec.overrides)
    previous = []
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        overrides.append(f"resume={run_dir}")
        if (run_dir / "eval.json").exists():
            previous = json.loads((run_dir / "eval.json").read_text()).get("history") or []
    began, cpu = time.perf_counter(), time.process_time()
    with open(run_dir / "output.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        resuming = overrides[-1].startswith("resume=")
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resuming else 'start'} {spec.key}", flush=True)
        try:
            summary = fit(load_config(None, overrides))
            _merge_history(run_dir, previous)
            interrupted = summary.get("interrupted_at") is not None
            return {"ok": not interrupted, "interrupted": interrupted, "seconds": time.perf_counter() - began,
                    "cpu_seconds": time.process_time() - cpu,
                    "error": f"interrupted at iteration {summary['interrupted_at']}" if interrupted else None}
        except Exception as error:  # noqa: BLE001 - any failure of a run is recorded, the suite goes on
            traceback.print_exc()
            return {"ok": False, "interrupted": False, "seconds": time.perf_counter() - began,
                    "cpu_seconds": time.process_time() - cpu,
                    "error": f"{type(error).__name__}: {error}".strip().splitlines()[0][:500]}


def _init_worker(threads: int) -> None:
    os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")
    import torch

    torch.set_num_threads(threads)


def _record(spec: RunSpec, state: str, attempts: int, outcome: dict | None) -> None:
    Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(spec.run_dir) / STATE_FILE, {
        "run": spec.key, "state": state, "attempts": attempts, "overrides": _fingerprint(spec),
        "error": (outcome or {}).get("error"), "seconds": (outcome or {}).get("seconds"),
        "cpu_seconds": (outcome or {}).get("cpu_seconds"),
    })


class _Progress:
    """One line per finished attempt: [done/total] run: state (seconds, score)."""

    def __init__(self, total: int, log):
        self.total, self.done, self.log = total, 0, log

    def __call__(self, spec: RunSpec, outcome: dict, attempt: int, final: bool) -> None:
        if outcome["ok"] or final:
            self.done += 1
        seconds = f"{outcome.get('seconds') or 0:.0f} s"
        if outcome["ok"]:
            stored = json.loads((Path(spec.run_dir) / "eval.json").read_text())
            final_eval = stored.get("final") or {}
            score = final_eval.get("normalised_score")
            shown = f"final normalised {score:.1f}" if score is not None else "no normalised score"
            self.log(f"[{self.done}/{self.total}] {spec.key}: finished in {seconds}, {shown}")
        elif outcome.get("interrupted"):
            self.log(f"[{self.done}/{self.total}] {spec.key}: interrupted; run the command again to resume")
        else:
            then = "recorded as failed, going on" if final else "retrying once from scratch"
            self.log(f"[{self.done}/{self.total}] {spec.key}: attempt {attempt}/{ATTEMPTS} failed after {seconds}: "
                     f"{outcome['error']} ({then}; see {spec.run_dir}/output.log)")


def _handle(spec, outcome, attempts, progress, retry) -> bool:
    """Record one attempt's outcome; returns True when the run should be tried again."""
    attempts[spec.key] = attempts.get(spec.key, 0) + 1
    tried = attempts[spec.key]
    final = outcome["ok"] or outcome.get("interrupted") or tried >= ATTEMPTS
    state = "finished" if outcome["ok"] else "interrupted" if outcome.get("interrupted") else \
        ("failed" if final else "retrying")
    _record(spec, state, tried, outcome)
    progress(spec, outcome, tried, final)
    if not final:
        retry(spec)
    return bool(outcome.get("interrupted"))


def _run_sequential(pending: list[RunSpec], attempts: dict, progress) -> None:
    queue = [(spec, False) for spec in pending]
    while queue:
        spec, fresh = queue.pop(0)
        _record(spec, "running", attempts.get(spec.key, 0), None)
        stop = _handle(spec, execute_run(spec, fresh), attempts, progress,
                       retry=lambda s: queue.insert(0, (s, True)))
        if stop:
            return


def _run_parallel(pending: list[RunSpec], attempts: dict, progress, jobs: int) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    queue = [(spec, False) for spec in pending]
    pool, in_flight = None, {}
    try:
        while queue or in_flight:
            if pool is None:
                pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                                           initargs=(threads,))
            while queue and len(in_flight) < jobs:
                spec, fresh = queue.pop(0)
                _record(spec, "running", attempts.get(spec.key, 0), None)
                in_flight[pool.submit(execute_run, spec, fresh)] = spec
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                spec = in_flight.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool as error:  # the worker died (killed, out of memory, crash)
                    broken = True
                    outcome = {"ok": False, "error": f"worker process died: {error}", "seconds": None}
                if _handle(spec, outcome, attempts, progress, retry=lambda s: queue.insert(0, (s, True))):
                    queue.clear()
            if broken:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def run_suite(suite: Suite, out, jobs: int = 1, log=print) -> dict:
    """Run every unfinished run of ``suite`` under ``out``; write and return the results.

    jobs == 1 runs in this process, one run after another; jobs > 1 in that many spawned processes
    (each with cpu_count // jobs torch threads).
    """
    from lightning_marl.benchmarking.results import write_outputs

    out = Path(out)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, found {jobs}")
    plan = plan_runs(suite, out)
    validate_configs(plan)
    check_stored_runs(plan)
    out.mkdir(parents=True, exist_ok=True)
    store_plan(out, suite, plan)
    pending = [s for s in plan.runs if not is_finished(Path(s.run_dir), s.steps)]
    log(f"suite {suite.name}: {len(plan.runs)} runs, {len(plan.runs) - len(pending)} already finished (skipped), "
        f"{len(pending)} to run with --jobs {jobs}; output in {out}")
    for name, why in plan.missing.items():
        log(f"dataset {name} is missing, its runs are skipped: {why}")
    attempts: dict[str, int] = {}
    progress = _Progress(len(pending), log)
    if jobs == 1 or len(pending) <= 1:
        _run_sequential(pending, attempts, progress)
    else:
        _run_parallel(pending, attempts, progress, jobs)
    return write_outputs(out)


def store_plan(out: Path, suite: Suite, plan: Plan) -> None:
    """Write OUT/suite.yaml and OUT/plan.json, keeping what earlier invocations on other parts of
    the suite (``--datasets``, ``--methods``) planned: the report then covers all of them."""
    import yaml

    new_suite, new_plan = yaml.safe_load(suite_yaml(suite)), plan_json(plan)
    if (out / "plan.json").exists() and (out / SUITE_FILE).exists():
        old_suite, old_plan = yaml.safe_load((out / SUITE_FILE).read_text()), json.loads((out / "plan.json").read_text())
        for key, name in (("datasets", "name"), ("methods", "label")):
            have = {entry[name] for entry in new_suite[key]}
            new_suite[key] = [e for e in old_suite.get(key, []) if e[name] not in have] + new_suite[key]
        keys = {(r["dataset"], r["method"], r["seed"]) for r in new_plan["runs"]}
        new_plan["runs"] = [r for r in old_plan["runs"] if (r["dataset"], r["method"], r["seed"]) not in keys] + \
            new_plan["runs"]
        cells = {(c["dataset"], c["method"]) for c in new_plan["unsupported"]}
        new_plan["unsupported"] += [c for c in old_plan["unsupported"] if (c["dataset"], c["method"]) not in cells]
        planned = {d.name for d in suite.datasets}
        new_plan["missing"] = {**{d: w for d, w in old_plan["missing"].items() if d not in planned}, **plan.missing}
    atomic_write_text(out / SUITE_FILE, yaml.safe_dump(new_suite, sort_keys=False))
    atomic_write_json(out / "plan.json", new_plan)


def plan_json(plan: Plan) -> dict:
    """The plan as stored in OUT/plan.json (what ``report`` reads besides the run directories)."""
    return {
        "runs": [asdict(s) | {"overrides": list(s.overrides)} for s in plan.runs],
        "unsupported": [{"dataset": d, "method": m, "reason": r} for (d, m), r in plan.unsupported.items()],
        "missing": plan.missing,
    }
