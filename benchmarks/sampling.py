"""What sampling batches from a large memory-mapped dataset costs beside a training step.

Builds (once, kept in --dir) a synthetic dataset in our on-disk format with --transitions rows
of a VMAS-navigation-like task (3 agents, observation 18, state 54, action 2; next-step fields
stored once and the state a view of the observations: about 0.26 kB per transition, 2.6 GB at
10M), then measures with the training threads the step would use:

* **step**: one OMIGA ``train_step`` at batch 128, hidden 256 (no sampling), the denominator;
* **sample warm / cold**: ``OfflineDataModule.sample`` inline, the mean over the first --steps
  batches from a fresh mapping of the files, their pages in the page cache or dropped
  (``posix_fadvise(DONTNEED)`` on every array file, after releasing every earlier mapping: a page
  that a live mapping has touched stays cached). Cold, the first batches read the files in, the
  kernel's readahead pulling in far more than the rows asked for;
* **loop warm / cold, prefetch P**: the real training loop — the datamodule's batch stream
  (background prefetch of P batches, data.prefetch) feeding ``train_step`` — against the same
  number of steps on pre-sampled batches, alternated in --rounds rounds (the machine's speed
  drifts by ±20 % between minutes, so only the two measured back to back compare). The share of a
  training step lost to sampling is (loop − alone) / loop per round; the table gives the median
  and the range over rounds, and the time spent fetching inside the loop. Every loop block maps
  the files anew (cold: after dropping their pages). The goal of issue #8 is under 5 %;
* with ``--warm-page-cache false true``, each of the above also with ``data.warm_page_cache``
  (one byte of every page read in file order by a background thread from the moment the
  datamodule is set up; the first batch waits for it). Cold rows measured in one process depend
  on the rounds before them (see ``benchmarks/cold_start.py``, which starts a process per run).

Run:
    python benchmarks/sampling.py                         # 10M transitions in /tmp/lightning_marl_sampling
    python benchmarks/sampling.py --transitions 1000000 --steps 200 --settle 500 --rounds 3
"""

from __future__ import annotations

import argparse
import gc
import itertools
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
WARMER_LABEL = {"false": "", "true": ", data.warm_page_cache"}


def tiny_transitions(n: int) -> TensorDict:
    """Episodes of EPISODE_LEN steps whose next-step fields are the following step's (random
    terminal ones at an episode's end), as collected data has them."""
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[EPISODE_LEN - 1::EPISODE_LEN] = True
    obs = torch.randn(n, AGENTS, OBS)
    next_obs = torch.cat([obs[1:], torch.randn(1, AGENTS, OBS)])
    next_obs[done.squeeze(-1)] = torch.randn(int(done.sum()), AGENTS, OBS)
    return TensorDict({
        ("agents", "observation"): obs,
        ("agents", "action"): torch.rand(n, AGENTS, ACTION) * 2 - 1,
        "state": obs.flatten(1),
        "episode": torch.arange(n) // EPISODE_LEN,
        ("next", "agents", "observation"): next_obs,
        ("next", "state"): next_obs.flatten(1),
        ("next", "reward"): torch.randn(n, 1),
        ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        ("next", "truncated"): done.clone(),
        ("next", "done"): done,
    }, batch_size=[n])


def build(path: Path, n: int, chunk: int = 1 << 20) -> None:
    """Write a one-episode dataset with write_dataset, then grow every array in place to ``n`` rows
    (n // EPISODE_LEN episodes): the arrays that also store next-step values get one more row per
    episode, the final rows are every episode's last."""
    spec = TaskSpec(n_agents=AGENTS, obs_dim=OBS, state_dim=AGENTS * OBS, discrete=False, action_dim=ACTION)
    template = path.parent / (path.name + ".template")
    write_dataset(template, tiny_transitions(EPISODE_LEN), {"spec": spec, "quality": "synthetic"}, overwrite=True)
    meta = json.loads((template / "metadata.json").read_text())
    episodes = n // EPISODE_LEN
    with_next_steps = set(meta["next_steps"]["stored_in"].values())
    for name, entry in meta["arrays"].items():
        file = template / entry["file"]
        dtype = np.dtype(entry["dtype"].replace("torch.", "")) if entry["dtype"] != "torch.bool" else np.bool_
        rows = episodes if name == "final_rows" else n + episodes if name in with_next_steps else n
        shape = [rows] + entry["shape"][1:]
        array = np.memmap(file, dtype=dtype, mode="w+", shape=tuple(shape))
        rng = np.random.default_rng(0)
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            index = np.arange(start, stop)
            if name == "final_rows":
                array[start:stop] = index * EPISODE_LEN + EPISODE_LEN - 1
            elif name == "episode":
                array[start:stop] = index // EPISODE_LEN
            elif dtype == np.bool_:
                array[start:stop] = ((index + 1) % EPISODE_LEN == 0).reshape(-1, *[1] * (len(shape) - 1))
            else:
                array[start:stop] = rng.standard_normal((stop - start, *shape[1:]), dtype=np.float32)
        array.flush()
        del array
        entry["shape"], entry["sha256"] = shape, "not computed (benchmark data)"
        print(f"  wrote {name:<28} {list(shape)}", flush=True)
    meta["n_transitions"], meta["n_episodes"] = n, episodes
    (template / "metadata.json").write_text(json.dumps(meta, indent=2))
    os.replace(template, path)


def open_dataset(path: Path, cache: str):
    """The dataset mapped anew, its pages in the page cache ("warm") or not ("cold").

    Earlier mappings are released first: a page that a live mapping has touched stays in the page
    cache whatever DONTNEED says (measured: 12.8 GB stayed cached after dropping a 9 GB dataset
    that this process had sampled from), so "cold" needs a fresh mapping of evicted pages."""
    gc.collect()
    (warm_page_cache if cache == "warm" else drop_page_cache)(path)
    return load_dataset(path, verify="never")


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


def batches_ms(sample, first: int, batches: int) -> float:
    """Mean ms per batch of ``sample(first)``, ..., ``sample(first + batches - 1)``."""
    return ms_per_step(lambda k: sample(first + k), batches)


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
    parser.add_argument("--steps", type=int, default=300, help="training steps per timed block (loop or alone)")
    parser.add_argument("--settle", type=int, default=2000,
                        help="loop steps on a fresh mapping before the timed block (the mapping fills in: minor page "
                             "faults, and reads when cold); their extra time over pre-sampled steps is reported")
    parser.add_argument("--rounds", type=int, default=5, help="alternated (alone, loop) pairs per configuration")
    parser.add_argument("--iterations-per-batch", type=int, default=RunConfig.iterations_per_batch,
                        help="batches the stream hands over at once, as fit's iterations_per_batch (default: fit's)")
    parser.add_argument("--prefetch", type=int, nargs="+", default=[0, 4, 16])
    parser.add_argument("--warm-page-cache", nargs="+", default=["false"], choices=["false", "true"],
                        help="data.warm_page_cache values to measure (true: the files read in order before the first batch)")
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
    size_gb = sum(f.stat().st_size for f in path.rglob("*.bin")) / 1e9
    dataset = load_dataset(path, verify="never")
    arrays = len(dataset.metadata["arrays"])
    layout = "stored once" if dataset.next_sources else "stored as arrays of their own"

    spec = TaskSpec(n_agents=AGENTS, obs_dim=OBS, state_dim=AGENTS * OBS, discrete=False, action_dim=ACTION)
    torch.manual_seed(0)
    module = OMIGA.from_spec(spec, hidden=[256, 256])
    pool_source = OfflineDataModule(dataset, args.batch, seed=0, warm_page_cache="false")
    pool = [pool_source.sample(k).clone() for k in range(64)]
    del pool_source
    del dataset  # every measurement maps the files anew (see open_dataset)
    step_ms = per_call_ms(lambda k: module.train_step(pool[k % 64]), seconds=3.0)

    samples, loops = {}, []
    for cache, warmer in itertools.product(("warm", "cold"), args.warm_page_cache):
        datamodule = OfflineDataModule(open_dataset(path, cache), args.batch, seed=0, warm_page_cache=warmer)
        first = 10_000 + len(samples) * 100_000
        windows = ((first, args.steps), (first + args.steps, args.settle), (first + args.steps + args.settle, args.steps))
        samples[cache, warmer] = tuple(batches_ms(datamodule.sample, start, batches) for start, batches in windows)
        datamodule.teardown()
        del datamodule  # (a live mapping keeps its pages cached: see open_dataset)
        for depth in args.prefetch:
            alone, loop, fetch, settling = [], [], [], []
            for round_ in range(args.rounds):
                def timed_loop():
                    seed = 100 + 10 * depth + round_
                    datamodule = OfflineDataModule(open_dataset(path, cache), args.batch, seed=seed, prefetch=depth,
                                                   iterations_per_batch=args.iterations_per_batch,
                                                   warm_page_cache=warmer)
                    stream = iter(_BatchStream(datamodule))
                    steps, start = 0, time.perf_counter()
                    while steps < args.settle:
                        for batch in as_list(next(stream)):
                            module.train_step(batch)
                            steps += 1
                    settling.append((time.perf_counter() - start, steps))
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
                    datamodule.teardown()

                def timed_alone():
                    alone.append(ms_per_step(lambda k: module.train_step(pool[k % 64]), args.steps))

                for measure in ((timed_alone, timed_loop) if round_ % 2 == 0 else (timed_loop, timed_alone)):
                    measure()
            shares = [max(0.0, b - a) / b for a, b in zip(alone, loop)]
            alone_ms = statistics.median(alone)
            extra = statistics.median(seconds - steps * alone_ms / 1e3 for seconds, steps in settling)
            loops.append((cache, warmer, depth, alone_ms, statistics.median(loop), shares, fetch, loop, extra))

    print(f"\ndataset {path}: {args.transitions:,} transitions, {size_gb:.1f} GB on disk, "
          f"{arrays} arrays (next-step fields {layout}); batch {args.batch}; {args.threads} threads; "
          f"malloc: {malloc}; the loop's stream hands over {args.iterations_per_batch} batch(es) at a time")
    print(f"OMIGA train_step (3 agents, hidden 256) on 64 pre-sampled batches: {step_ms:.2f} ms")
    print(f"| sampling alone from a fresh mapping, ms per batch | first {args.steps} | next {args.settle} "
          f"| next {args.steps} | their share beside the step |")
    print("|---|---|---|---|---|")
    for (cache, warmer), (first, settle, steady) in samples.items():
        print(f"| {cache} page cache{WARMER_LABEL[warmer]} | {first:.3f} | {settle:.3f} | {steady:.3f} "
              f"| {steady / (steady + step_ms):.1%} |")
    print(f"\n{args.rounds} rounds of {args.steps} steps each way (a fresh mapping of the files each), medians:")
    print(f"| training loop | first {args.settle} steps: seconds beyond pre-sampled steps (once per run) "
          f"| then ms per step, loop | pre-sampled | (loop - pre-sampled) / loop | per round "
          "| ms fetching a batch, in the loop | its share of the loop's step |")
    print("|---|---|---|---|---|---|---|---|")
    for cache, warmer, depth, alone_ms, loop_ms, shares, fetch, loop, extra in loops:
        label = ("inline" if depth == 0 else f"prefetch {depth}") + WARMER_LABEL[warmer]
        rounds = " ".join(f"{share:.1%}" for share in shares)
        fetch_share = statistics.median(f / t for f, t in zip(fetch, loop))
        print(f"| {cache} page cache, {label} | {extra:.2f} | {loop_ms:.2f} | {alone_ms:.2f} | {statistics.median(shares):.1%} | {rounds} "
              f"| {statistics.median(fetch):.3f} | {fetch_share:.1%} |")


if __name__ == "__main__":
    main()
