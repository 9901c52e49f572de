"""Critics shared by methods: per-agent twin Q_i(o_i, a_i), centralised twin Q(s, a) and V(s).

Twin critics are ``n_critics`` independent networks of the same shape with stacked parameters
(``EnsembleMLP``), evaluated in one batched matmul per layer; their outputs carry a leading
critic dimension. ``central_critics``
builds the centralised Q(s, a)/V(s) pair of IQL; the OMSD score-decomposition plugin reuses it
(with ``expectile_loss``) for its pre-trained critic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_marl.nets.agents import with_agent_ids
from lightning_marl.nets.ensemble import EnsembleMLP
from lightning_marl.nets.linear import ReLUMLP


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |expectile - 1(diff < 0)| · diff², with diff = Q̄ - V (IQL's value loss).

    Example:
        >>> expectile_loss(torch.tensor([2.0, -2.0]), 0.7)  # (0.7·4 + 0.3·4) / 2
        tensor(2.)
    """
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff**2).mean()


class AgentQ(nn.Module):
    """Per-agent twin critics Q_i(o_i, a_i), shared weights and a one-hot agent id.

    Continuous (``action_dim``): input [o_i, a_i], one output. Discrete (``n_actions``): input
    o_i, one output per action, gathered at a_i. ``forward(obs [..., N, O], action [..., N, A] or
    indices [..., N]) -> [n_critics, ..., N]``; ``members=k`` evaluates only the first k critics,
    ``frozen=True`` with detached weights (an actor's loss through Q reaches the action only).
    The critics' parameters are stacked (``EnsembleMLP``): both run in one batched matmul per layer.

    Example:
        >>> q = AgentQ(obs_dim=3, n_agents=2, hidden=(8, 8), action_dim=2)
        >>> q(torch.zeros(5, 2, 3), torch.zeros(5, 2, 2)).shape
        torch.Size([2, 5, 2])
        >>> AgentQ(3, 2, (8, 8), n_actions=4)(torch.zeros(5, 2, 3), torch.zeros(5, 2, dtype=torch.long)).shape
        torch.Size([2, 5, 2])
    """

    def __init__(self, obs_dim: int, n_agents: int, hidden=(256, 256), action_dim: int = 0, n_actions: int = 0,
                 n_critics: int = 2):
        super().__init__()
        if (action_dim > 0) == (n_actions > 0):
            raise ValueError("AgentQ needs exactly one of action_dim (continuous) or n_actions (discrete)")
        self.discrete = n_actions > 0
        in_features, out_features = (obs_dim, n_actions) if self.discrete else (obs_dim + action_dim, 1)
        self.net = EnsembleMLP(n_critics, in_features + n_agents, out_features, hidden)
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    def all_actions(self, observation: torch.Tensor, members: int | None = None, frozen: bool = False) -> torch.Tensor:
        """Discrete only: Q_i(o_i, ·) for every action, [n_critics, ..., N, K]."""
        return self.net(with_agent_ids(observation, self.agent_ids), members, frozen)

    def forward(self, observation: torch.Tensor, action: torch.Tensor, members: int | None = None,
                frozen: bool = False) -> torch.Tensor:
        if self.discrete:
            values = self.all_actions(observation, members, frozen)
            index = action.unsqueeze(-1).expand(values.shape[0], *action.shape, 1)
            return values.gather(-1, index).squeeze(-1)
        x = with_agent_ids((observation, action), self.agent_ids)
        return self.net(x, members, frozen).squeeze(-1)


class CentralQ(nn.Module):
    """Centralised twin critics Q(s, a) over a state and the joint action (one-hot when discrete).

    ``forward(state [..., S], action [..., N, A] or indices [..., N]) -> [n_critics, ..., 1]``;
    ``members`` and ``frozen`` as for ``AgentQ``; parameters stacked (``EnsembleMLP``).

    Example:
        >>> q = CentralQ(state_dim=4, n_agents=2, hidden=(8, 8), action_dim=3)
        >>> q(torch.zeros(5, 4), torch.zeros(5, 2, 3)).shape
        torch.Size([2, 5, 1])
    """

    def __init__(self, state_dim: int, n_agents: int, hidden=(256, 256), action_dim: int = 0, n_actions: int = 0,
                 n_critics: int = 2):
        super().__init__()
        if (action_dim > 0) == (n_actions > 0):
            raise ValueError("CentralQ needs exactly one of action_dim (continuous) or n_actions (discrete)")
        self.n_actions = n_actions
        in_features = state_dim + n_agents * (n_actions or action_dim)
        self.net = EnsembleMLP(n_critics, in_features, 1, hidden)

    def joint_action(self, action: torch.Tensor) -> torch.Tensor:
        """The joint action as one vector [..., N·A] (discrete: concatenated one-hots)."""
        if self.n_actions:
            action = F.one_hot(action, self.n_actions).float()
        return action.flatten(-2)

    def forward(self, state: torch.Tensor, action: torch.Tensor, members: int | None = None,
                frozen: bool = False) -> torch.Tensor:
        x = torch.cat([state, self.joint_action(action).to(state.dtype)], dim=-1)
        return self.net(x, members, frozen)


class StateValue(nn.Module):
    """A centralised value V(s): ``[..., S] -> [..., 1]``.

    Example:
        >>> StateValue(state_dim=4, hidden=(8, 8))(torch.zeros(5, 4)).shape
        torch.Size([5, 1])
    """

    def __init__(self, state_dim: int, hidden=(256, 256)):
        super().__init__()
        self.net = ReLUMLP(state_dim, 1, hidden)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)

    def pair(self, state: torch.Tensor, frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(state), self(frozen))``, the second without gradients, in one pass (``ReLUMLP.pair``)."""
        return self.net.pair(state, frozen)


def central_critics(spec, hidden=(256, 256), n_critics: int = 2) -> tuple[CentralQ, StateValue]:
    """Twin Q(s, a) and V(s) for a task; s is the mixer state (``spec.mixer_state_dim``: the
    concatenated per-agent states when the data has them, else the global state), as
    ``OfflineMARLModule.mixer_state`` returns it.

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> q, v = central_critics(spec, hidden=(8, 8))
        >>> q(torch.zeros(5, 6), torch.zeros(5, 2, 2)).shape, v(torch.zeros(5, 6)).shape
        (torch.Size([2, 5, 1]), torch.Size([5, 1]))
    """
    widths = {"n_actions": spec.n_actions} if spec.discrete else {"action_dim": spec.action_dim}
    q = CentralQ(spec.mixer_state_dim, spec.n_agents, hidden, n_critics=n_critics, **widths)
    return q, StateValue(spec.mixer_state_dim, hidden)
