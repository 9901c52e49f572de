"""Per-agent networks with shared weights: one batched call over all agents."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_marl.nets.linear import ReLUMLP


def with_agent_ids(x: torch.Tensor | Sequence[torch.Tensor], agent_ids: torch.Tensor) -> torch.Tensor:
    """``x [..., N, F]`` with the one-hot agent ids ``agent_ids [N, N]`` appended: ``[..., N, F + N]``.
    ``x`` may also be several tensors [..., N, F_i] (an observation and an action): they and the
    ids are concatenated in one operation.

    Example:
        >>> with_agent_ids(torch.zeros(5, 2, 3), torch.eye(2)).shape
        torch.Size([5, 2, 5])
        >>> with_agent_ids((torch.zeros(5, 2, 3), torch.ones(5, 2, 1)), torch.eye(2)).shape
        torch.Size([5, 2, 6])
    """
    parts = [x] if isinstance(x, torch.Tensor) else list(x)
    first = parts[0]
    parts.append(agent_ids.to(first.dtype).expand(*first.shape[:-1], agent_ids.shape[-1]))
    return torch.cat(parts, dim=-1)


class AgentMLP(nn.Module):
    """An MLP shared by all agents, with a one-hot agent id appended to its input.

    ``x: [..., N, in_features] -> [..., N, out_features]``; all agents in one call. ``net(obs, action)``
    takes the concatenation of its inputs.

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

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``inputs``: one tensor [..., N, in_features], or several whose last sizes add up to it
        (an observation and an action), concatenated with the agent ids in one operation."""
        return self.net(with_agent_ids(inputs if len(inputs) > 1 else inputs[0], self.agent_ids))

    def pair(self, x: torch.Tensor, frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(x), self(frozen))``, the second without gradients, from one pass of the network
        over both inputs' rows where it runs fused (``ReLUMLP.pair``): e.g. Q_i(o, .) for the loss
        and Q_i(o', .) for a double-Q target. ``x`` and ``frozen`` differ at most in dimension 0.

        Example:
            >>> net = AgentMLP(in_features=3, out_features=2, n_agents=2, hidden=(8, 8))
            >>> live, frozen = net.pair(torch.zeros(5, 2, 3), torch.ones(4, 2, 3))
            >>> live.shape, frozen.shape, frozen.requires_grad
            (torch.Size([5, 2, 2]), torch.Size([4, 2, 2]), False)
        """
        if x.shape[1:] == frozen.shape[1:]:
            joint = with_agent_ids(torch.cat([x, frozen]), self.agent_ids)
            return self.net.joint_pair(joint, x.shape[0])
        live = self(x)
        with torch.no_grad():
            return live, self(frozen)

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]
