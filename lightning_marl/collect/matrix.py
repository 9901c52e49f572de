"""Datasets of the built-in matrix games with a chosen distribution over joint actions."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec
from lightning_marl.envs.matrix_games import payoff


def matrix_game_transitions(game: str, joint_actions, probs, n: int, seed: int = 0, n_actions: int = 3,
                            **game_params) -> tuple[TensorDict, TaskSpec]:
    """``n`` one-step transitions whose joint actions are drawn from ``joint_actions`` with ``probs``.

    Discrete games only. Observations are a constant zero of size 1 per agent (as in the env).

    Example:
        >>> td, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1)], [0.3, 0.7], n=10)
        >>> td["next", "reward"].shape, spec.n_actions
        (torch.Size([10, 1]), 3)
    """
    generator = torch.Generator().manual_seed(seed)
    table = torch.as_tensor(joint_actions, dtype=torch.int64)
    picks = torch.multinomial(torch.as_tensor(probs, dtype=torch.float32), n, replacement=True, generator=generator)
    actions = table[picks]
    n_agents = actions.shape[1]
    reward = payoff(game, actions, **game_params).unsqueeze(-1)
    zeros_obs = torch.zeros(n, n_agents, 1)
    mask = torch.ones(n, n_agents, n_actions, dtype=torch.bool)
    true, false = torch.ones(n, 1, dtype=torch.bool), torch.zeros(n, 1, dtype=torch.bool)
    td = TensorDict(
        {
            schema.OBS: zeros_obs, schema.NEXT_OBS: zeros_obs.clone(),
            schema.STATE: torch.zeros(n, n_agents), schema.NEXT_STATE: torch.zeros(n, n_agents),
            schema.ACTION: actions, schema.ACTION_MASK: mask, schema.NEXT_ACTION_MASK: mask.clone(),
            schema.REWARD: reward, schema.AGENT_REWARD: reward.unsqueeze(1).expand(n, n_agents, 1).clone(),
            schema.TERMINATED: true, schema.TRUNCATED: false, schema.DONE: true.clone(),
            schema.EPISODE: torch.arange(n),
        },
        batch_size=[n],
    )
    spec = TaskSpec(n_agents=n_agents, obs_dim=1, state_dim=n_agents, discrete=True, n_actions=n_actions)
    return td, spec


def continuous_agree_transitions(n: int, n_agents: int = 2, good_fraction: float = 0.5, mode: float = 1.0,
                                 noise: float = 0.1, seed: int = 0) -> tuple[TensorDict, TaskSpec]:
    """``n`` one-step transitions of the continuous ``agree`` game (actions [-1, 1], size 1).

    A fraction ``good_fraction`` of the rows (on average) are the good mode: every agent near
    ``mode`` (Gaussian ``noise``, clamped to [-1, 1]); the others are uniformly random joint
    actions. Observations are a constant zero of size 1 per agent (as in the env).

    Example:
        >>> td, spec = continuous_agree_transitions(10, n_agents=3, good_fraction=1.0, noise=0.0)
        >>> td["agents", "action"].shape, td["next", "reward"].squeeze(-1).tolist() == [1.0] * 10
        (torch.Size([10, 3, 1]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    good = torch.rand(n, 1, 1, generator=generator) < good_fraction
    near_mode = (mode + noise * torch.randn(n, n_agents, 1, generator=generator)).clamp(-1.0, 1.0)
    uniform = torch.rand(n, n_agents, 1, generator=generator) * 2 - 1
    actions = torch.where(good, near_mode, uniform)
    reward = payoff("agree", actions).unsqueeze(-1)
    zeros_obs = torch.zeros(n, n_agents, 1)
    true, false = torch.ones(n, 1, dtype=torch.bool), torch.zeros(n, 1, dtype=torch.bool)
    td = TensorDict(
        {
            schema.OBS: zeros_obs, schema.NEXT_OBS: zeros_obs.clone(),
            schema.STATE: torch.zeros(n, n_agents), schema.NEXT_STATE: torch.zeros(n, n_agents),
            schema.ACTION: actions,
            schema.REWARD: reward, schema.AGENT_REWARD: reward.unsqueeze(1).expand(n, n_agents, 1).clone(),
            schema.TERMINATED: true, schema.TRUNCATED: false, schema.DONE: true.clone(),
            schema.EPISODE: torch.arange(n),
        },
        batch_size=[n],
    )
    spec = TaskSpec(n_agents=n_agents, obs_dim=1, state_dim=n_agents, discrete=False, action_dim=1)
    return td, spec

