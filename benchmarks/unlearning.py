"""The unlearning problem of offline-to-online fine-tuning, measured (OVMSE, METHODS.md §4).

From an offline-trained QMIX-CQL policy, fine-tune online under four arms and record the
evaluation return over the first online environment steps:

* ``plain``: no value memory, epsilon-greedy for every agent;
* ``memory``: offline value memory (``value_memory``) + epsilon-greedy;
* ``exploration``: sequential exploration (``sequential_exploration``), no memory;
* ``ovmse``: both.

``run`` builds a mixed-quality dataset on the task (a focus-fire heuristic, the first available
attack action else move east, with per-episode random-action probability 0.1 / 0.5 / 1.0 at
40 / 40 / 20 %), trains QMIX-CQL offline on it, then runs every arm for every seed in one process
(SMAX compiles once per process) and writes ``results.json``. ``plot`` prints the table (the
return at env step 0, the depth of the initial drop = return at step 0 minus the lowest
evaluation within the first ``--early`` fraction of the budget, the return after the budget,
all mean ± std over seeds; and the online collection throughput, env steps per second with
learning on) and writes ``unlearning.png`` (mean ± std over seeds per arm).

QMIX-CQL's mixer reads SMAX's raw world state (values up to ~32) standardised by the dataset's
statistics (``normalise_state``, its default), so the plain ``smax`` env trains stably.
Offline QMIX-CQL uses alpha 10 (with alpha 1 the small SMAX rewards left Q nearly flat and the
greedy policy never engaged: return 0); online the CQL penalty is off (``--online-alpha 0``: plain
QMIX TD learning plus the arm's plugins). Schedules are scaled to the small budget: lambda anneals 1 -> 0 over the whole budget (the
paper's default is 500k env steps) and epsilon 0.2 -> 0.05 over a quarter of it.

Run (minutes on a CPU; SMAX compiles for about a minute first):
    nice -n 10 python benchmarks/unlearning.py run --out runs/unlearning --env-steps 20480 --seeds 0 1 2
    python benchmarks/unlearning.py plot --out runs/unlearning
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

ARMS = {
    "plain": ["epsilon_greedy"],
    "memory": ["value_memory", "epsilon_greedy"],
    "exploration": ["sequential_exploration"],
    "ovmse": ["value_memory", "sequential_exploration"],
}


def focus_fire(move: int = 1):
    """Attack the first available enemy; with no target in range, move ``move`` (east) when available."""
    import torch

    def act(observation, mask):
        attack = mask[..., 5:]
        first = attack.float().argmax(-1) + 5
        fallback = torch.where(mask[..., move], move, mask.float().argmax(-1))  # else the first available (stop)
        return torch.where(attack.any(-1), first, fallback)

    return act


def build_dataset(path: Path, task: str, episodes: int, num_envs: int, seed: int = 0):
    """A mixed-quality SMAX dataset: focus fire with a per-episode random-action probability."""
    import torch

    from lightning_marl.collect.behaviour import uniform_random
    from lightning_marl.collect.collector import collect_transitions
    from lightning_marl.data.dataset import load_dataset, write_dataset
    from lightning_marl.data.schema import TaskSpec
    from lightning_marl.envs import env_spec, make_env, rollout_returns

    if (path / "metadata.json").exists():
        return load_dataset(path)
    env = make_env("smax", task, num_envs=num_envs, seed=seed)
    spec = env_spec(env)
    generator = torch.Generator().manual_seed(seed)
    expert, random = focus_fire(), uniform_random(spec, generator)
    levels = torch.tensor([0.1, 0.5, 1.0])
    level_of_env = torch.zeros(num_envs, dtype=torch.int64)

    def on_reset(done):
        level_of_env[done] = torch.multinomial(torch.tensor([0.4, 0.4, 0.2]), int(done.sum()), replacement=True,
                                               generator=generator)

    def act(observation, mask):
        pick = torch.rand(observation.shape[:2], generator=generator) < levels[level_of_env].unsqueeze(-1)
        return torch.where(pick, random(observation, mask), expert(observation, mask))

    transitions = collect_transitions(env, act, episodes, spec, seed=seed, progress=False, on_reset=on_reset)
    reference = {
        "random": rollout_returns(env, uniform_random(spec, torch.Generator().manual_seed(1)), 64, seed=1)["mean"],
        "expert": rollout_returns(env, expert, 64, seed=1)["mean"],
        "source": "uniform random and the noiseless focus-fire heuristic, 64 episodes each",
    }
    task_spec = TaskSpec(n_agents=spec["n_agents"], obs_dim=spec["obs_dim"], state_dim=spec["state_dim"],
                         discrete=True, n_actions=spec["n_actions"], agent_names=spec["agent_names"])
    env.close()
    return write_dataset(path, transitions, {
        "spec": task_spec, "env": {"name": "smax", "task": task, "params": {}, "max_steps": None},
        "quality": "mixed", "reference_returns": reference,
        "description": "focus fire with random-action probability 0.1/0.5/1.0 per episode (40/40/20 %)",
    }, overwrite=True)


def run(args) -> None:
    import torch

    from lightning_marl.config import load_config
    from lightning_marl.online import finetune, finetune_config
    from lightning_marl.run import fit

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    dataset = build_dataset(out / "dataset", args.task, args.episodes, args.num_envs)
    print(f"dataset {len(dataset)} transitions, reference {dataset.reference_returns} "
          f"({time.perf_counter() - began:.0f} s)", flush=True)
    offline_dir = out / "offline"
    common = [f"env.num_envs={args.num_envs}", "eval.episodes=32", "progress=false", "log_every=200"]
    if not (offline_dir / "policy.pt").exists():
        fit(load_config(None, [
            "algorithm.name=qmix_cql", f"algorithm.steps={args.offline_steps}", "algorithm.batch_size=128",
            f"algorithm.alpha={args.alpha}",
            "algorithm.hidden=[64,64]", "algorithm.lr=0.0005", f"data.path={dataset.path}", "env.name=dataset",
            f"run_dir={offline_dir}", "checkpoint_every=100000", *common,
        ]))
    offline = json.loads((offline_dir / "eval.json").read_text())
    print(f"offline QMIX-CQL: return {offline['final']['return_mean']:.3f}, win rate {offline['final']['win_rate']} "
          f"({time.perf_counter() - began:.0f} s)", flush=True)
    frames, updates = args.frames_per_batch, args.updates_per_collection
    eval_every = max(1, args.eval_every_env_steps // frames) * updates
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": []}
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            plugins = []
            for name in ARMS[arm]:
                if name == "value_memory":
                    plugins.append({"name": name, "params": {"anneal_env_steps": args.env_steps}})
                else:
                    plugins.append({"name": name, "params": {"start": 0.2, "end": 0.05, "seed": seed,
                                                             "anneal_env_steps": args.env_steps // 4}})
            overrides = [
                f"online.env_steps={args.env_steps}", f"online.num_envs={args.num_envs}",
                f"online.frames_per_batch={frames}", f"online.updates_per_collection={updates}",
                f"algorithm.alpha={args.online_alpha}",
                f"plugins={json.dumps(plugins)}", f"eval.every={eval_every}", f"seed={seed}",
                f"run_dir={out / f'{arm}-seed{seed}'}", "checkpoint_every=100000", *common,
            ]
            t = time.perf_counter()
            summary = finetune(finetune_config(offline_dir, None, overrides))
            history = [{"env_steps": e["env_steps"], "return_mean": e["return_mean"], "win_rate": e["win_rate"]}
                       for e in summary["history"]]
            results["runs"].append({"arm": arm, "seed": seed, "history": history,
                                    "env_steps_per_s": summary["env_steps_per_s"],
                                    "grad_steps_per_s": summary["grad_steps_per_s"],
                                    "seconds": time.perf_counter() - t})
            results.update(task=args.task, env_steps=args.env_steps, offline=offline["final"],
                           settings={k: v for k, v in vars(args).items() if k != "func"})
            results_path.write_text(json.dumps(results, indent=1))
            print(f"{arm:<12} seed {seed}: returns {[round(h['return_mean'], 2) for h in history]} "
                  f"({summary['env_steps_per_s']:.0f} env steps/s, {time.perf_counter() - t:.0f} s)", flush=True)


def _mean_std(values):
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def plot(args) -> None:
    results = json.loads((Path(args.out) / "results.json").read_text())
    budget = results["env_steps"]
    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in results["runs"])]
    lines = [f"unlearning on SMAX {results['task']}: {budget} online env steps, offline QMIX-CQL return "
             f"{results['offline']['return_mean']:.3f} (win rate {results['offline']['win_rate']})",
             f"{'arm':<12} {'seeds':>5} {'return@0':>14} {'initial drop':>14} {'final return':>14} "
             f"{'final win':>12} {'env steps/s':>12}"]
    curves = {}
    for arm in arms:
        runs = [r for r in results["runs"] if r["arm"] == arm]
        start = [r["history"][0]["return_mean"] for r in runs]
        early = [min(h["return_mean"] for h in r["history"] if h["env_steps"] <= args.early * budget) for r in runs]
        drop = [s - e for s, e in zip(start, early)]
        final = [r["history"][-1]["return_mean"] for r in runs]
        win = [r["history"][-1]["win_rate"] or 0.0 for r in runs]
        speed = [r["env_steps_per_s"] for r in runs]
        cells = [_mean_std(v) for v in (start, drop, final, win)]
        lines.append(f"{arm:<12} {len(runs):>5} " + " ".join(f"{m:>7.3f} ± {s:<4.2f}" for m, s in cells)
                     + f" {statistics.fmean(speed):>12.0f}")
        steps = [h["env_steps"] for h in runs[0]["history"]]
        curves[arm] = (steps, [_mean_std([r["history"][i]["return_mean"] for r in runs]) for i in range(len(steps))])
    lines.append(f"initial drop: return at env step 0 minus the lowest evaluation within the first "
                 f"{args.early:.0%} of the budget (positive = unlearning); mean ± std over seeds")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, (steps, stats) in curves.items():
        mean = [m for m, _ in stats]
        std = [s for _, s in stats]
        ax.plot(steps, mean, label=arm)
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_xlabel("online environment steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"Fine-tuning QMIX-CQL on SMAX {results['task']} (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    path = Path(args.out) / "unlearning.png"
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="dataset, offline QMIX-CQL, then every arm x seed")
    r.add_argument("--out", default="runs/unlearning")
    r.add_argument("--task", default="3m")
    r.add_argument("--episodes", type=int, default=400, help="dataset episodes")
    r.add_argument("--offline-steps", type=int, default=4000)
    r.add_argument("--alpha", type=float, default=10.0, help="CQL weight offline")
    r.add_argument("--online-alpha", type=float, default=0.0, help="CQL weight online (0: plain QMIX TD online)")
    r.add_argument("--env-steps", type=int, default=20480)
    r.add_argument("--num-envs", type=int, default=16, help="collection and evaluation envs (one SMAX compile)")
    r.add_argument("--frames-per-batch", type=int, default=256)
    r.add_argument("--updates-per-collection", type=int, default=8)
    r.add_argument("--eval-every-env-steps", type=int, default=2048)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=run)
    p = sub.add_parser("plot", help="print the table and write unlearning.png")
    p.add_argument("--out", default="runs/unlearning")
    p.add_argument("--early", type=float, default=0.25, help="fraction of the budget where the drop is measured")
    p.set_defaults(func=plot)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
