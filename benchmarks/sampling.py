"""What sampling batches from a large memory-mapped dataset costs beside a training step.

Builds (once, kept in --dir) a synthetic dataset in our on-disk format with --transitions rows
of a VMAS-navigation-like task (3 agents, observation 18, state 54, action 2; about 0.9 kB per
transition, 9 GB at 10M), then measures with the training threads the step would use:

* **step**: one OMIGA ``train_step`` at batch 128, hidden 256 (no sampling), the denominator;
* **sample warm / cold**: ``OfflineDataModule.sample`` inline, with the dataset's pages in the
  page cache, and after dropping them (``posix_fadvise(DONTNEED)`` on every array file) — with
  10M random rows nearly every row of a cold batch is a disk read;
* **loop warm / cold, prefetch P**: the real training loop — the datamodule's batch stream
  (background prefetch of P batches, data.prefetch) feeding ``train_step`` — against the same
  number of steps on pre-sampled batches, alternated in --rounds rounds (the machine's speed
  drifts by ±20 % between minutes, so only the two measured back to back compare). The share of a
  training step lost to sampling is (loop − alone) / loop per round; the table gives the median
  and the range over rounds. Cold: the dataset's pages are dropped before every loop block. The
  goal of issue #8 is under 5 %.

Run:
    python benchmarks/sampling.py                         # 10M transitions in /tmp/lightning_marl_sampling
    python benchmarks/sampling.py --transitions 1000000 --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from lightning_marl.algorithms.omiga import OMIGA  # noqa: E402
from lightning_marl.config import RunConfig  # noqa: E402
from lightning_marl.data.datamodule import OfflineDataModule, _BatchStream  # noqa: E402
from lightning_marl.data.dataset import load_dataset, write_dataset  # noqa: E402
from lightning_marl.data.schema import TaskSpec  # noqa: E402
from lightning_marl.malloc import tune_malloc  # noqa: E402

AGENTS, OBS, ACTION, EPISODE_LEN = 3, 18, 2, 100


def tiny_transitions(n: int) -> TensorDict:
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[EPISODE_LEN - 1::EPISODE_LEN] = True
    obs = torch.randn(n, AGENTS, OBS)
    return TensorDict({
        ("agents", "observation"): obs,
        ("agents", "action"): torch.rand(n, AGENTS, ACTION) * 2 - 1,
        "state": obs.flatten(1),
        "episode": torch.arange(n) // EPISODE_LEN,
        ("next", "agents", "observation"): torch.randn(n, AGENTS, OBS),
        ("next", "state"): torch.randn(n, AGENTS * OBS),
        ("next", "reward"): torch.randn(n, 1),
        ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        ("next", "truncated"): done.clone(),
        ("next", "done"): done,
    }, batch_size=[n])


def build(path: Path, n: int, chunk: int = 1 << 20) -> None:
    """Write a small dataset with write_dataset, then grow every array to ``n`` rows in place."""
    spec = TaskSpec(n_agents=AGENTS, obs_dim=OBS, state_dim=AGENTS * OBS, discrete=False, action_dim=ACTION)
    template = path.parent / (path.name + ".template")
    write_dataset(template, tiny_transitions(EPISODE_LEN), {"spec": spec, "quality": "synthetic"}, overwrite=True)
    meta = json.loads((template / "metadata.json").read_text())
    for name, entry in meta["arrays"].items():
        file = template / entry["file"]
        dtype = np.dtype(entry["dtype"].replace("torch.", "")) if entry["dtype"] != "torch.bool" else np.bool_
        shape = [n] + entry["shape"][1:]
        array = np.memmap(file, dtype=dtype, mode="w+", shape=tuple(shape))
        rng = np.random.default_rng(0)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            rows = np.arange(start, stop)
            if name == "episode":
                array[start:stop] = rows // EPISODE_LEN
            elif dtype == np.bool_:
                array[start:stop] = ((rows + 1) % EPISODE_LEN == 0).reshape(-1, *[1] * (len(shape) - 1))
            else:
                array[start:stop] = rng.standard_normal((stop - start, *shape[1:]), dtype=np.float32)
        array.flush()
        del array
        entry["shape"], entry["sha256"] = shape, "not computed (benchmark data)"
        print(f"  wrote {name:<28} {list(shape)}", flush=True)
    meta["n_transitions"], meta["n_episodes"] = n, n // EPISODE_LEN
    (template / "metadata.json").write_text(json.dumps(meta, indent=2))
    os.replace(template, path)


def drop_page_cache(path: Path) -> None:
    """Evict the dataset's pages (written back first: DONTNEED leaves dirty pages in the cache)."""
    for file in path.rglob("*.bin"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_page_cache(path: Path) -> None:
    """Read every array file once, so that its pages are in the page cache."""
    for file in path.rglob("*.bin"):
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass


def as_list(item) -> list:
    return item if isinstance(item, list) else [item]


def ms_per_step(fn, steps: int) -> float:
    start = time.perf_counter()
    for k in range(steps):
        fn(k)
    return 1e3 * (time.perf_counter() - start) / steps


def per_call_ms(fn, seconds: float = 2.0, first: int = 0) -> float:
    fn(first)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(first + 1 + calls)
        calls += 1
    return 1e3 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=10_000_000)
    parser.add_argument("--dir", default="/tmp/lightning_marl_sampling")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="training steps per block (loop or alone)")
    parser.add_argument("--rounds", type=int, default=5, help="alternated (alone, loop) pairs per configuration")
    parser.add_argument("--iterations-per-batch", type=int, default=RunConfig.iterations_per_batch,
                        help="batches the stream hands over at once, as fit's iterations_per_batch (default: fit's)")
    parser.add_argument("--prefetch", type=int, nargs="+", default=[0, 4, 16])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's default malloc settings (default: fit's, lightning_marl.malloc)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = "glibc's defaults"
    if not args.glibc_malloc and tune_malloc():  # what fit does: a new batch's buffers come back without page faults
        malloc = "tuned as fit tunes it"

    path = Path(args.dir) / f"navigation_like_{args.transitions}"
    if not path.exists():
        print(f"building {path} ({args.transitions:,} transitions) ...", flush=True)
        start = time.perf_counter()
        build(path, args.transitions)
        print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
    dataset = load_dataset(path, verify="never")
    size_gb = sum(f.stat().st_size for f in path.rglob("*.bin")) / 1e9

    spec = TaskSpec(n_agents=AGENTS, obs_dim=OBS, state_dim=AGENTS * OBS, discrete=False, action_dim=ACTION)
    torch.manual_seed(0)
    module = OMIGA.from_spec(spec, hidden=[256, 256])
    datamodule = OfflineDataModule(dataset, args.batch, seed=0)
    pool = [datamodule.sample(k).clone() for k in range(64)]
    step_ms = per_call_ms(lambda k: module.train_step(pool[k % 64]), seconds=3.0)

    samples, loops = {}, []
    for cache in ("warm", "cold"):
        (warm_page_cache if cache == "warm" else drop_page_cache)(path)
        samples[cache] = per_call_ms(datamodule.sample, seconds=2.0, first=10_000 + len(samples) * 10_000)
        for depth in args.prefetch:
            alone, loop, fetch = [], [], []
            for round_ in range(args.rounds):
                def timed_loop():
                    if cache == "cold":
                        drop_page_cache(path)
                    seed = 100 + 10 * depth + round_
                    stream = iter(_BatchStream(OfflineDataModule(dataset, args.batch, seed=seed, prefetch=depth,
                                                                 iterations_per_batch=args.iterations_per_batch)))
                    for batch in as_list(next(stream)):
                        module.train_step(batch)
                    fetching, steps, start = 0.0, 0, time.perf_counter()
                    while steps < args.steps:  # (whole groups: a few steps more than asked at most)
                        fetched = time.perf_counter()
                        group = as_list(next(stream))
                        fetching += time.perf_counter() - fetched
                        for batch in group:
                            module.train_step(batch)
                        steps += len(group)
                    loop.append(1e3 * (time.perf_counter() - start) / steps)
                    fetch.append(1e3 * fetching / steps)
                    stream.close()

                def timed_alone():
                    alone.append(ms_per_step(lambda k: module.train_step(pool[k % 64]), args.steps))

                for measure in ((timed_alone, timed_loop) if round_ % 2 == 0 else (timed_loop, timed_alone)):
                    measure()
            shares = [max(0.0, b - a) / b for a, b in zip(alone, loop)]
            loops.append((cache, depth, statistics.median(alone), statistics.median(loop), shares, fetch, loop))

    print(f"\ndataset {path}: {args.transitions:,} transitions, {size_gb:.1f} GB on disk, "
          f"{len(dataset.transitions.keys(True, True))} arrays; batch {args.batch}; {args.threads} threads; "
          f"malloc: {malloc}; the loop's stream hands over {args.iterations_per_batch} batch(es) at a time")
    print(f"OMIGA train_step (3 agents, hidden 256) on 64 pre-sampled batches: {step_ms:.2f} ms")
    print("| measurement | ms per batch | its share beside the step |")
    print("|---|---|---|")
    for cache, ms in samples.items():
        print(f"| sample alone, {cache} page cache | {ms:.3f} | {ms / (ms + step_ms):.1%} |")
    print(f"\n{args.rounds} rounds of {args.steps} steps each way, medians:")
    print("| training loop | ms per step, loop | ms per step, pre-sampled | (loop - pre-sampled) / loop | per round "
          "| ms fetching a batch, in the loop | its share of the loop's step |")
    print("|---|---|---|---|---|---|---|")
    for cache, depth, alone_ms, loop_ms, shares, fetch, loop in loops:
        label = "inline" if depth == 0 else f"prefetch {depth}"
        rounds = " ".join(f"{share:.1%}" for share in shares)
        fetch_share = statistics.median(f / t for f, t in zip(fetch, loop))
        print(f"| {cache} page cache, {label} | {loop_ms:.2f} | {alone_ms:.2f} | {statistics.median(shares):.1%} | {rounds} "
              f"| {statistics.median(fetch):.3f} | {fetch_share:.1%} |")


if __name__ == "__main__":
    main()
