"""What a cold page cache costs a training run, with and without ``data.warm_page_cache``.

Each measurement is a fresh process (what a user starts), on the synthetic dataset of
``benchmarks/sampling.py`` (built there if missing; 10M transitions, 2.6 GB), or on each of
``--datasets`` (their runs alternated with the others, e.g. the same data in another layout),
with each ``--warm-page-cache`` value (``data.warm_page_cache``: the files read in, in order,
before the first batch) and each ``--prefetch`` value (``data.prefetch``: batches fetched ahead by
background threads; default 0, inline). The process drops the
dataset's pages (``posix_fadvise(DONTNEED)``, or keeps them: ``warm``), maps the files and runs the
real training loop (the datamodule's batch stream, 8 batches at a time as ``fit`` takes them,
feeding OMIGA's ``train_step``). Every --window steps it runs 250 steps on pre-sampled batches;
the loop's extra time in a window is its time less the window's steps at the mean pre-sampled
step time measured on both sides of it (the machine's speed drifts by ±20 % between minutes, so
only neighbours compare). The table gives the extra seconds accumulated over the first N steps
and their share of those steps' time, medians over --rounds processes per variant, the variants
alternated.

The extra time of a cold start is one read of the dataset plus, on the virtual machines of this
project, a first touch of every page by the CPU that costs microseconds per page (see
``lightning_marl/data/page_cache.py``); it is paid once per run, so its share shrinks as the run
grows. Issue #8 asks for sampling under 5 % of a step, also cold.

Run:
    python benchmarks/cold_start.py                    # 10M transitions, 20000 steps, 3 rounds: cold and warm,
                                                       # each with and without data.warm_page_cache (~35 min)
    python benchmarks/cold_start.py --transitions 100000 --steps 2000 --window 500 --rounds 1
    python benchmarks/cold_start.py --warm-page-cache false --datasets DIR_A DIR_B
    python benchmarks/cold_start.py --variants cold --warm-page-cache false --prefetch 0 2   # also 2 batches fetched ahead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).parent))

import sampling  # noqa: E402  (the benchmark dataset and its cache handling)
import torch  # noqa: E402

from lightning_marl.data.dataset import read_metadata  # noqa: E402

VARIANTS = ("cold", "warm")  # the page cache when the process starts


def child(path: Path, cache: str, steps: int, window: int, batch: int, prefetch: int = 0,
          warm_page_cache: str = "false") -> dict:
    from lightning_marl.algorithms.omiga import OMIGA
    from lightning_marl.data.datamodule import OfflineDataModule, _BatchStream
    from lightning_marl.data.dataset import load_dataset
    from lightning_marl.data.schema import TaskSpec
    from lightning_marl.malloc import tune_malloc

    tune_malloc()  # as fit does
    spec = TaskSpec(n_agents=sampling.AGENTS, obs_dim=sampling.OBS, state_dim=sampling.AGENTS * sampling.OBS,
                    discrete=False, action_dim=sampling.ACTION)
    torch.manual_seed(0)
    module = OMIGA.from_spec(spec, hidden=[256, 256])
    # Pre-sampled batches: the dataset's first rows (a few pages; the measurement drops them again).
    dataset = load_dataset(path, verify="never")
    pool = [dataset.rows(torch.arange(k * batch, (k + 1) * batch)) for k in range(16)]
    del dataset

    def alone(n: int = 250) -> float:
        start = time.perf_counter()
        for k in range(n):
            module.train_step(pool[k % len(pool)])
        return (time.perf_counter() - start) / n

    before = alone()
    datamodule = OfflineDataModule(sampling.open_dataset(path, cache), batch, seed=7,
                                   warm_page_cache=warm_page_cache, iterations_per_batch=8, prefetch=prefetch)
    stream = iter(_BatchStream(datamodule))
    extras, done, counted, start = [], 0, 0, time.perf_counter()
    while done < steps:
        for item in sampling.as_list(next(stream)):
            module.train_step(item)
            done += 1
        if done - counted >= window or done >= steps:  # (whole groups: a window may run a few steps over)
            took = time.perf_counter() - start
            after = alone()
            expected = (done - counted) * (before + after) / 2
            extras.append((done, took - expected, expected))
            before, counted, start = after, done, time.perf_counter()
    stream.close()
    warmer = datamodule.page_cache
    return {"extras": extras, "warmer_seconds": warmer.seconds if warmer is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=10_000_000)
    parser.add_argument("--dir", default="/tmp/lightning_marl_sampling")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="the page cache at the start: cold (the dataset's pages dropped) or warm")
    parser.add_argument("--warm-page-cache", nargs="+", default=["false", "true"], choices=("false", "true", "auto"),
                        help="data.warm_page_cache values to run each variant with")
    parser.add_argument("--datasets", nargs="+", type=Path,
                        help="datasets to run on (default: the built one); the rows of the table name them")
    parser.add_argument("--prefetch", type=int, nargs="+", default=[0],
                        help="data.prefetch values to run each variant with (background threads fetching ahead)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-dataset", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child_dataset, args.child, args.steps, args.window, args.batch,
                               args.prefetch[0], args.warm_page_cache[0])))
        return
    paths = args.datasets or [Path(args.dir) / f"navigation_like_{args.transitions}"]
    for path in paths:
        if not path.exists():
            print(f"building {path} ({args.transitions:,} transitions) ...", flush=True)
            sampling.build(path, args.transitions)
    runs = [(path, variant, warmer, prefetch) for path in paths for variant in args.variants
            for warmer in args.warm_page_cache for prefetch in args.prefetch]
    label = {run: run[1] + (f", warm_page_cache={run[2]}" if args.warm_page_cache != ["false"] else "")
             + (f", prefetch {run[3]}" if args.prefetch != [0] else "")
             + (f", {run[0].name}" if len(paths) > 1 else "") for run in runs}
    results = {label[run]: [] for run in runs}
    for round_ in range(args.rounds):
        for run in runs if round_ % 2 == 0 else runs[::-1]:
            path, variant, warmer, prefetch = run
            command = [sys.executable, __file__, "--child", variant, "--child-dataset", str(path),
                       "--batch", str(args.batch), "--steps", str(args.steps), "--window", str(args.window),
                       "--prefetch", str(prefetch), "--warm-page-cache", warmer]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            results[label[run]].append(result)
            total = sum(extra for _, extra, _ in result["extras"])
            base = sum(expected for _, _, expected in result["extras"])
            print(f"round {round_ + 1}, {label[run]}: {total:.2f} s extra over {args.steps} steps, "
                  f"{total / (base + total):.1%} of their time"
                  + (f" (warm-up {result['warmer_seconds']:.1f} s)" if result["warmer_seconds"] else ""), flush=True)

    marks = [m for m in (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000) if args.window <= m <= args.steps] or [args.steps]
    print()
    for path in paths:
        size_gb = sum(f.stat().st_size for f in path.rglob("*.bin")) / 1e9
        print(f"{path}: {len(read_metadata(path)['arrays'])} arrays, {size_gb:.1f} GB")
    print(f"OMIGA, 3 agents, batch {args.batch}; a fresh process per run, {args.rounds} per variant; medians")
    print("| page cache | warm-up (s) | " + " | ".join(f"extra s, first {m}" for m in marks)
          + f" | share of the first {marks[-1]} steps | share of the last half |")
    print("|---|---|" + "---|" * len(marks) + "---|---|")
    for name, measured in results.items():
        cumulative = {m: [] for m in marks}
        shares, late = [], []
        for run in measured:
            extra, base, late_extra, late_base, pending, began = 0.0, 0.0, 0.0, 0.0, list(marks), 0
            for done, window_extra, window_base in run["extras"]:
                extra += window_extra
                base += window_base
                if began >= args.steps // 2:  # windows that begin in the second half
                    late_extra, late_base = late_extra + window_extra, late_base + window_base
                began = done
                while pending and done >= pending[0]:  # the first window ending at or past the mark
                    cumulative[pending.pop(0)].append(extra)
            shares.append(extra / (base + extra))
            late.append(late_extra / (late_base + late_extra) if late_base else float("nan"))
        warm_up = [run["warmer_seconds"] for run in measured if run["warmer_seconds"]]
        print(f"| {name} | {statistics.median(warm_up):.1f} | " if warm_up else f"| {name} | - | ", end="")
        print(" | ".join(f"{statistics.median(cumulative[m]):.2f}" for m in marks)
              + f" | {statistics.median(shares):.1%} | {statistics.median(late):.1%} |")


if __name__ == "__main__":
    main()
