"""Per-agent networks with shared weights: one batched call over all agents."""

from __future__ import annotations

import torch
from torch import nn

from lightning_marl.nets.linear import ReLUMLP


def with_agent_ids(x: torch.Tensor, agent_ids: torch.Tensor) -> torch.Tensor:
    """``x [..., N, F]`` with the one-hot agent ids ``agent_ids [N, N]`` appended: ``[..., N, F + N]``.

    Example:
        >>> with_agent_ids(torch.zeros(5, 2, 3), torch.eye(2)).shape
        torch.Size([5, 2, 5])
    """
    return torch.cat([x, agent_ids.to(x.dtype).expand(*x.shape[:-1], agent_ids.shape[-1])], dim=-1)


class AgentMLP(nn.Module):
    """An MLP shared by all agents, with a one-hot agent id appended to its input.

    ``x: [..., N, in_features] -> [..., N, out_features]``; all agents in one call.

    Example:
        >>> net = AgentMLP(in_features=3, out_features=1, n_agents=2, hidden=(8, 8))
        >>> net(torch.zeros(5, 2, 3)).shape
        torch.Size([5, 2, 1])
    """

    def __init__(self, in_features: int, out_features: int, n_agents: int, hidden=(256, 256),
                 activate_last_layer: bool = False):
        super().__init__()
        self.n_agents = n_agents
        self.net = ReLUMLP(in_features + n_agents, out_features, hidden, activate_last_layer=activate_last_layer)
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(with_agent_ids(x, self.agent_ids))

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]
