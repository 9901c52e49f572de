"""Value mixers: global weights and bias from the state, monotonic in the agents' values."""

from __future__ import annotations

import torch
from torch import nn


class OMIGAMixer(nn.Module):
    """OMIGA's mixer: the SAME non-negative weights w(s) and bias b(s) mix Q_i and V_i.

    h = Linear(s); w = |Linear(relu(h))| (one per agent); b = Linear(relu(h)).

    Example:
        >>> mixer = OMIGAMixer(state_dim=6, n_agents=2, hidden=4)
        >>> w, b = mixer(torch.zeros(5, 6))
        >>> mixer.mix(torch.zeros(5, 2), w, b).shape
        torch.Size([5, 1])
    """

    def __init__(self, state_dim: int, n_agents: int, hidden: int = 64):
        super().__init__()
        self.hidden = nn.Linear(state_dim, hidden)
        self.weights = nn.Linear(hidden, n_agents)
        self.bias = nn.Linear(hidden, 1)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w [B, N] (>= 0) and b [B, 1] for a state [B, S]."""
        h = torch.relu(self.hidden(state))
        return self.weights(h).abs(), self.bias(h)

    @staticmethod
    def mix(values: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """sum_i w_i values_i + b: [B, N] -> [B, 1]."""
        return (w * values).sum(-1, keepdim=True) + b
