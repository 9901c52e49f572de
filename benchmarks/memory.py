"""Resident memory of `fit`: private (anonymous) and shared (file-backed) pages per DDP rank, over time.

Trains OMIGA on a dataset (default: the 10M-transition synthetic dataset that
benchmarks/sampling.py builds; any dataset path works) with 1 and then 2 DDP processes on this
machine, and prints for each rank, from /proc/self/status: RssAnon (private memory: the goal is
under 2 GB per process, whatever the dataset's size) and RssFile (pages of the memory-mapped
dataset, which are page cache shared by every rank on the machine, not a copy per rank), sampled
every --every iterations. With --minutes the run lasts that long (the soak test of issue #8: the
table shows whether private memory stays flat).

Run:
    python benchmarks/sampling.py --transitions 10000000     # builds the dataset once
    python benchmarks/memory.py --ranks 1 2 --steps 2000
    python benchmarks/memory.py --ranks 1 --minutes 60 --every 20000     # one-hour soak
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

import lightning as L  # noqa: E402


def memory_mb() -> dict[str, float]:
    """RssAnon, RssFile, RssShmem and VmRSS of this process in MB (Linux)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                values[name] = int(rest.split()[0]) / 1024
    return values


class MemoryProbe(L.Callback):
    """Records memory_mb() every ``every`` iterations (and the wall time) into ``out/rank<r>.json``."""

    def __init__(self, out: Path, every: int, minutes: float | None):
        self.out, self.every, self.minutes = Path(out), every, minutes
        self.samples, self.start = [], None

    def on_train_start(self, trainer, module):
        self.start = time.time()
        self.samples.append({"iteration": module.iteration, "seconds": 0.0, **memory_mb()})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.iteration % self.every == 0:
            self.samples.append({"iteration": module.iteration, "seconds": time.time() - self.start, **memory_mb()})
        if self.minutes is not None and time.time() - self.start > 60 * self.minutes:
            trainer.should_stop = True

    def on_train_end(self, trainer, module):
        self.samples.append({"iteration": module.iteration, "seconds": time.time() - self.start, **memory_mb()})
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.samples))


def run(dataset: str, ranks: int, steps: int, every: int, minutes: float | None, out: Path) -> None:
    from lightning_marl.config import load_config
    from lightning_marl.run import fit

    overrides = [f"data.path={dataset}", "data.verify=never", f"algorithm.steps={steps}", f"run_dir={out / 'run'}",
                 "progress=false", "log_every=1000", f"checkpoint_every={max(steps, 1)}"]
    if ranks > 1:
        overrides += [f"trainer.devices={ranks}", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
    fit(load_config("omiga/vmas_navigation", overrides + ["env=null"]),
        extra_callbacks=[MemoryProbe(out, every, minutes)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="/tmp/lightning_marl_sampling/navigation_like_10000000")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=None, help="soak: run this long instead of --steps")
    parser.add_argument("--out", default=None, help="where rank files go (default: a temporary directory)")
    parser.add_argument("--_rank-run", dest="rank_run", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = 10**9 if args.minutes else args.steps
    base = Path(args.out or tempfile.mkdtemp(prefix="lightning_marl_memory_"))

    if args.rank_run is not None:  # one configuration, in its own process (DDP re-executes this script)
        run(args.dataset, args.rank_run, steps, args.every, args.minutes, base / f"ranks{args.rank_run}")
        return
    import subprocess
    import sys

    print(f"dataset {args.dataset}")
    print("| processes | rank | iteration | seconds | RssAnon MB (private) | RssFile MB (shared page cache) | VmRSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for ranks in args.ranks:
        subprocess.run([sys.executable, __file__, "--dataset", args.dataset, "--steps", str(args.steps), "--every",
                        str(args.every), "--out", str(base), "--_rank-run", str(ranks)]
                       + (["--minutes", str(args.minutes)] if args.minutes else []), check=True)
        for rank in range(ranks):
            for sample in json.loads((base / f"ranks{ranks}" / f"rank{rank}.json").read_text()):
                print(f"| {ranks} | {rank} | {sample['iteration']} | {sample['seconds']:.0f} | {sample['RssAnon']:.0f} "
                      f"| {sample['RssFile']:.0f} | {sample['VmRSS']:.0f} |")


if __name__ == "__main__":
    main()
