"""PettingZoo MPE (through ``mpe2``) as a batched TorchRL env, for comparing with published MPE numbers.

A serial batch of PettingZoo parallel envs (:class:`lightning_marl.envs.pettingzoo.PettingZooBatch`;
MPE is cheap: about a thousand env-steps/s); finished envs reset one by one.

- ``simple_spread_v3``: N agents (default 3), per-agent rewards (MPE's ``local_ratio`` mix);
  the team reward is their mean.
- ``simple_tag_v3``: the adversaries (predators, default 3) are the "agents" group and share
  their reward; the prey follows :func:`lightning_marl.envs.prey.flee`.

Actions: discrete (default; 5 moves: stay, left, right, down, up; all-True action masks) or,
with ``continuous_actions=True``, MPE's own Box [0, 1]^5 (env_spec reports those bounds).
``"state"`` is PettingZoo's ``state()`` (every agent's observation, the prey's included).
Episodes end by the time limit ``max_steps`` (MPE's ``max_cycles``, default 25): ``truncated``.
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_marl.envs.contract import TEAM_REWARD_MEAN
from lightning_marl.envs.pettingzoo import PettingZooBatch
from lightning_marl.envs.prey import flee, to_mpe_discrete
from lightning_marl.errors import ConfigError
from lightning_marl.registry import register

TASKS = ("simple_spread_v3", "simple_tag_v3")
DEFAULT_MAX_STEPS = 25


def _module(task: str):
    try:
        if task == "simple_spread_v3":
            from mpe2 import simple_spread_v3 as module
        else:
            from mpe2 import simple_tag_v3 as module
    except ImportError as error:
        raise ConfigError(
            f"env 'mpe' needs mpe2 and pettingzoo ({error}); install the extra: pip install \"lightning_marl[envs]\""
        ) from error
    return module


def _prey_action(direction: np.ndarray, continuous: bool):
    """MPE's prey action from a flee direction [2]: a move index, or Box [0, 1]^5 forces."""
    if not continuous:
        return int(to_mpe_discrete(torch.from_numpy(direction)))
    dx, dy = direction
    return np.array([0.0, max(-dx, 0.0), max(dx, 0.0), max(-dy, 0.0), max(dy, 0.0)], dtype=np.float32)


class MPEEnv(PettingZooBatch):
    """``num_envs`` copies of one PettingZoo MPE task, in the batch contract.

    Example:
        >>> env = MPEEnv("simple_spread_v3", num_envs=2, max_steps=5)
        >>> td = env.rollout(5)
        >>> td["next", "reward"].shape, bool(td["next", "truncated"][:, -1].all())
        (torch.Size([2, 5, 1]), True)
    """

    team_reward_rule = TEAM_REWARD_MEAN

    def __init__(self, task: str, num_envs: int = 8, *, max_steps: int = DEFAULT_MAX_STEPS,
                 continuous_actions: bool = False, seed: int = 0, device="cpu", **params):
        if task not in TASKS:
            raise ConfigError(f"unknown mpe task {task!r}; valid tasks: {', '.join(TASKS)}")
        module = _module(task)
        try:
            envs = [module.parallel_env(max_cycles=max_steps, continuous_actions=continuous_actions, **params)
                    for _ in range(num_envs)]
        except TypeError as error:
            raise ConfigError(f"mpe task {task!r} refused params {params}: {error}") from error
        self.task, self.continuous = task, continuous_actions
        everyone = list(envs[0].possible_agents)
        self.prey = [a for a in everyone if a.startswith("agent_")] if task == "simple_tag_v3" else []
        learners = [a for a in everyone if a not in self.prey]
        super().__init__(envs, learners, max_steps=max_steps, scripted=self._prey_actions if self.prey else None,
                         seed=seed, device=device)

    def _prey_actions(self, index: int) -> dict:
        """The prey's next actions in env ``index``, from the simulator's positions."""
        world = self._envs[index].unwrapped.world
        positions = {a.name: a.state.p_pos for a in world.agents}
        predators = torch.as_tensor(np.stack([positions[a] for a in self.group_map["agents"]]))[None].float()
        actions = {}
        for name in self.prey:
            prey = torch.as_tensor(positions[name])[None, None].float()
            actions[name] = _prey_action(flee(prey, predators)[0, 0].numpy(), self.continuous)
        return actions


@register("env", "mpe")
def make_mpe_env(
    task: str | None,
    *,
    num_envs: int = 8,
    seed: int = 0,
    device="cpu",
    max_steps: int | None = None,
    **params,
) -> MPEEnv:
    """PettingZoo MPE tasks through mpe2: simple_spread_v3, simple_tag_v3 (scripted prey).

    ``params`` go to mpe2's ``parallel_env`` (e.g. ``N=3``, ``local_ratio=0.5``,
    ``continuous_actions=True``); ``max_steps`` (MPE's ``max_cycles``) defaults to 25.
    """
    max_steps = DEFAULT_MAX_STEPS if max_steps is None else max_steps
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
    return MPEEnv(task, num_envs, max_steps=max_steps, seed=seed, device=device, **params)
