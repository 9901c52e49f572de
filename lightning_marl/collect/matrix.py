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
