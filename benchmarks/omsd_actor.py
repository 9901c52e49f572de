"""Grad-steps/s of OMSD's actor update (and of a whole training step) for 2 and 6 agents.

The actor update is what the sequential score decomposition costs: the diffusion scores of every
agent (one batched call of the noise network), the critic's -Q and one backward (``one_pass``),
or n of each with n optimiser steps (``exact``). Synthetic VMAS-navigation-like shapes
(observation 18 per agent, state = the concatenated observations, action 2), batch 128, the
METHODS.md network sizes (actors and critics 2x256, noise network 3x256, Mish).

Run:
    python benchmarks/omsd_actor.py                       # 2 and 6 agents, both variants
    python benchmarks/omsd_actor.py --agents 2 3 6 --seconds 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402
from lightning_marl_plugins.score_decomposition import ScoreDecomposition  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from lightning_marl.algorithms.omsd import OMSD  # noqa: E402
from lightning_marl.data import schema  # noqa: E402
from lightning_marl.data.schema import TaskSpec  # noqa: E402

OBS, ACTION = 18, 2


def synthetic(n_agents: int, size: int = 4096, seed: int = 0) -> tuple[TensorDict, TaskSpec]:
    g = torch.Generator().manual_seed(seed)
    obs, next_obs = torch.randn(size, n_agents, OBS, generator=g), torch.randn(size, n_agents, OBS, generator=g)
    td = TensorDict({
        schema.OBS: obs, schema.NEXT_OBS: next_obs,
        schema.STATE: obs.flatten(1), schema.NEXT_STATE: next_obs.flatten(1),
        schema.ACTION: torch.rand(size, n_agents, ACTION, generator=g) * 2 - 1,
        schema.REWARD: torch.randn(size, 1, generator=g), schema.TERMINATED: torch.zeros(size, 1, dtype=torch.bool),
    }, [size])
    return td, TaskSpec(n_agents=n_agents, obs_dim=OBS, state_dim=n_agents * OBS, discrete=False, action_dim=ACTION)


def rate(step, seconds: float) -> float:
    """Steps per second of ``step()`` over about ``seconds`` (after a short warm-up)."""
    for _ in range(5):
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return count / (time.perf_counter() - start)


def measure(n_agents: int, sequential: str, batch_size: int, seconds: float) -> tuple[float, float]:
    """(actor-update steps/s, whole-training-step steps/s)."""
    torch.manual_seed(0)
    data, spec = synthetic(n_agents)
    plugin = ScoreDecomposition(ScoreDecomposition.Params(iterations=1, batch_size=batch_size))
    module = OMSD.from_spec(spec, plugins=[plugin], sequential=sequential)
    plugin.pretrain(data, module)  # one iteration: the weights do not matter for speed
    batches = [data[torch.randint(len(data), (batch_size,))] for _ in range(16)]
    optimizers = dict(zip(module.group_parameters, module._optimizers()))
    counter = iter(range(1 << 40))

    def actor_step():
        batch = batches[next(counter) % len(batches)]
        if sequential == "exact":
            module.sequential_actor_steps(batch, optimizers, {})
            return
        pi = module.actor(batch.get(schema.OBS))
        loss = module.surrogate_loss(batch, module.mixer_state(batch), pi, pi.detach())
        module._step(loss, [optimizers["policy"]], ["policy"], {"policy": loss}, {})

    def train_step():
        module.train_step(batches[next(counter) % len(batches)])

    return rate(actor_step, seconds), rate(train_step, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"OMSD actor update, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'agents':>6} {'sequential':>10} {'actor steps/s':>14} {'train steps/s':>14}")
    for n in args.agents:
        for sequential in ("one_pass", "exact"):
            actor, train = measure(n, sequential, args.batch_size, args.seconds)
            print(f"{n:>6} {sequential:>10} {actor:>14.1f} {train:>14.1f}")


if __name__ == "__main__":
    main()
