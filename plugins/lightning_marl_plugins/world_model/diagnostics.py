"""Diagnostics of world models on held-out data: rank correlation, and a single global model of equal size.

Example:
    >>> round(spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 15.0, 40.0])), 6)
    0.8
"""

from __future__ import annotations

import math

import torch

from lightning_marl.nets.world_models import GlobalMLP, parameter_count
from lightning_marl_plugins.world_model.base import WorldModelAugmentation


def _ranks(x: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[torch.argsort(x)] = torch.arange(len(x), dtype=torch.float64)
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by order)."""
    rx, ry = _ranks(x.flatten()), _ranks(y.flatten())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


class GlobalBaseline(WorldModelAugmentation):
    """A single deterministic global MLP (s, o, a) -> (s', o', r), fitted like the plugins (for comparisons
    only: not registered, no rollouts). ``width`` sets its two hidden layers."""

    def build_model(self, spec) -> GlobalMLP:
        return GlobalMLP(spec.n_agents, spec.obs_dim, spec.action_width,
                         spec.state_dim + spec.n_agents * spec.agent_state_dim, hidden=tuple(self.params.hidden))

    def predict_mean(self, observation, action, state) -> dict:
        out = self.model(observation, action, state)
        return {**out, "uncertainty": torch.zeros(observation.shape[0], device=observation.device)}


def width_for(parameters: int, spec) -> int:
    """The hidden width h of a 2-hidden-layer GlobalMLP with about ``parameters`` parameters."""
    state = spec.state_dim + spec.n_agents * spec.agent_state_dim
    inputs = state + spec.n_agents * (spec.obs_dim + spec.action_width)
    outputs = state + spec.n_agents * spec.obs_dim + 1
    # h^2 + h (inputs + outputs + 2) + outputs = parameters
    b = inputs + outputs + 2
    h = (-b + math.sqrt(b * b + 4 * max(parameters - outputs, 1))) / 2
    return max(1, int(round(h)))


__all__ = ["GlobalBaseline", "parameter_count", "spearman", "width_for"]
