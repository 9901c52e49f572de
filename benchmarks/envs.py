"""Env-steps/s of every environment of ``make_env`` under uniform random (valid) actions.

Each row builds the env, resets it, runs ``--warmup`` batched steps (SMAX compiles here) and then
``--steps`` batched steps through ``env.step_and_maybe_reset``, with a torch policy in the loop
(``uniform_random`` from lightning_marl.collect.behaviour). env-steps/s counts one step of one env
of the batch; build and warm-up times are shown apart.

Run:
    python benchmarks/envs.py                          # the default table
    python benchmarks/envs.py --num-envs 64 --steps 200 --only vmas smax
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402

from lightning_marl.collect.behaviour import uniform_random  # noqa: E402
from lightning_marl.envs import env_spec, make_env  # noqa: E402

ROWS = [  # name, task, params, envs (None: --num-envs)
    ("matrix", "climbing", {}, None),
    ("vmas", "navigation", {}, None),
    ("vmas", "navigation", {"continuous_actions": False}, None),
    ("vmas", "balance", {}, None),
    ("vmas", "transport", {}, None),
    ("vmas", "dispersion", {}, None),
    ("vmas", "simple_spread", {}, None),
    ("vmas", "simple_tag", {}, None),
    ("mpe", "simple_spread_v3", {}, 8),
    ("mpe", "simple_tag_v3", {}, 8),
    ("mamujoco", "HalfCheetah-2x3", {}, 8),
    ("mamujoco", "Hopper-3x1", {}, 8),
    ("mamujoco", "Ant-2x4", {}, 8),
    ("mamujoco", "Walker2d-2x3", {}, 8),
    ("smax", "3m", {}, None),
    ("smax", "2s3z", {}, None),
]


def measure(name, task, params, num_envs, steps, warmup):
    start = time.perf_counter()
    env = make_env(name, task, num_envs=num_envs, seed=0, **params)
    act = uniform_random(env_spec(env), torch.Generator().manual_seed(0))
    built = time.perf_counter()
    td = env.reset()

    def run(n):
        nonlocal td
        for _ in range(n):
            td["agents", "action"] = act(td["agents", "observation"], td.get(("agents", "action_mask"), None))
            _, td = env.step_and_maybe_reset(td)

    run(warmup)
    warm = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - warm
    env.close()
    return built - start, warm - built, num_envs * steps / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=64, help="batch size of the vectorised envs (vmas, smax)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="env names to run (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'env':9} {'task':18} {'params':28} {'envs':>5} {'build s':>8} {'warm-up s':>10} {'env-steps/s':>12}")
    for name, task, params, envs in ROWS:
        if args.only and name not in args.only:
            continue
        envs = envs or args.num_envs
        try:
            build, warm, rate = measure(name, task, params, envs, args.steps, args.warmup)
        except Exception as error:  # e.g. an optional extra missing: say so and go on
            print(f"{name:9} {task:18} {str(params):28} {envs:>5} skipped: {error}")
            continue
        print(f"{name:9} {task:18} {str(params):28} {envs:>5} {build:8.1f} {warm:10.1f} {rate:12.0f}", flush=True)


if __name__ == "__main__":
    main()
