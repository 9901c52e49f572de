"""A deterministic decentralised actor (TD3-style): a = tanh(MLP([o_i; one-hot(i)]))."""

from __future__ import annotations

import torch
from torch import nn

from lightning_marl.nets.agents import AgentMLP


class DeterministicActor(nn.Module):
    """Deterministic policy shared by agents (agent id appended), actions in [-1, 1] by tanh.

    Example:
        >>> actor = DeterministicActor(obs_dim=3, action_dim=2, n_agents=2, hidden=(8, 8))
        >>> actor(torch.zeros(5, 2, 3)).shape
        torch.Size([5, 2, 2])
    """

    def __init__(self, obs_dim: int, action_dim: int, n_agents: int, hidden=(256, 256)):
        super().__init__()
        self.net = AgentMLP(obs_dim, action_dim, n_agents, hidden)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """Actions [..., N, A] in [-1, 1]."""
        return torch.tanh(self.net(observation))

    def act(self, observation: torch.Tensor, mask=None) -> torch.Tensor:
        return self(observation)
