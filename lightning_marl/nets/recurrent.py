"""Recurrent agent networks for partially observable tasks: a GRU shared by all agents.

Agents are folded into the batch dimension (one ``nn.GRU`` call over a whole [B, T] slice for
all agents at once, no Python loop over agents or time). ``RecurrentOptions`` holds the
hyper-parameters a method's config gains when it offers recurrent agents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_marl.nets.linear import Linear


@dataclass
class RecurrentOptions:
    """Config fields of methods with optional recurrent agents (mixed into their dataclass).

    ``recurrent``: GRU agent networks over [B, T] episode slices instead of MLPs over single
    transitions (discrete actions); ``gru_hidden``: width of the agents' encoder and GRU state
    (the MLP ``hidden`` list is then unused by the agent networks; mixers keep their own sizes);
    ``slice_len``: T, consecutive steps per sampled slice (``batch_size`` then counts slices);
    ``burn_in``: the first steps of a slice that start mid-episode only warm up the hidden
    state and are left out of the losses (slices that start at an episode's first step, where
    the zero initial state is exact, are trained on from their first step).

    Example:
        >>> RecurrentOptions().slice_len
        32
    """

    recurrent: bool = False
    gru_hidden: int = 64
    slice_len: int = 32
    burn_in: int = 0


class GRUAgent(nn.Module):
    """A GRU agent network shared by agents: [o_i; one-hot(i)] -> Linear -> ReLU -> GRU -> Linear.

    ``forward(sequence [B, T, N, O], next_sequence [B, T, N, O] | None, state [B, N, H] | None)``
    unrolls the GRU over the T steps of each slice from ``state`` (zeros: an episode's start)
    and returns ``(out [B, T, N, K], next_out [B, T, N, K] | None)``. ``next_out[:, t]`` is the
    output at the step's NEXT observation from the hidden state after step t — the bootstrap
    input of TD targets, correct at an episode's last step too (where ``sequence[:, t + 1]`` is
    padding or another episode), computed for all t in one batched GRU step.
    ``step(observation [..., N, O], state [..., N, H])`` advances one environment step
    (decentralised execution) and returns ``(out [..., N, K], new_state [..., N, H])``.

    Example:
        >>> net = GRUAgent(in_features=3, out_features=4, n_agents=2, hidden=8)
        >>> out, next_out = net(torch.zeros(5, 6, 2, 3), torch.zeros(5, 6, 2, 3))
        >>> out.shape, next_out.shape
        (torch.Size([5, 6, 2, 4]), torch.Size([5, 6, 2, 4]))
        >>> state = net.initial_state((5,))
        >>> for t in range(6):                                  # stepping reproduces the unroll
        ...     step_out, state = net.step(torch.zeros(5, 2, 3), state)
        >>> torch.allclose(step_out, out[:, -1], atol=1e-6)
        True
    """

    def __init__(self, in_features: int, out_features: int, n_agents: int, hidden: int = 64):
        super().__init__()
        self.n_agents = n_agents
        self.hidden_size = hidden
        self.encoder = Linear(in_features + n_agents, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out_features)
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    def initial_state(self, batch_shape, device=None, dtype=torch.float32) -> torch.Tensor:
        """The zero hidden state of an episode's start: [*batch_shape, N, H]."""
        device = device if device is not None else self.agent_ids.device
        return torch.zeros(*batch_shape, self.n_agents, self.hidden_size, device=device, dtype=dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., N, O] -> ReLU(Linear([o_i; one-hot(i)])) [..., N, H]."""
        ids = self.agent_ids.to(x.dtype).expand(*x.shape[:-1], self.n_agents)
        return torch.relu(self.encoder(torch.cat([x, ids], dim=-1)))

    def step(self, observation: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for any leading shape: out [..., N, K] and the new state [..., N, H]."""
        x = self.encode(observation)
        lead = x.shape[:-1]
        _, new_state = self.gru(x.reshape(-1, 1, self.hidden_size), state.reshape(1, -1, self.hidden_size).to(x.dtype))
        new_state = new_state.reshape(*lead, self.hidden_size)
        return self.head(new_state), new_state

    def unroll(self, sequence: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states after each step, [B, T, N, O] -> [B, T, N, H] (agents folded into the batch)."""
        b, t, n = sequence.shape[:3]
        x = self.encode(sequence).transpose(1, 2).reshape(b * n, t, self.hidden_size)
        h0 = None if state is None else state.reshape(1, b * n, self.hidden_size).to(x.dtype)
        hiddens, _ = self.gru(x, h0)
        return hiddens.reshape(b, n, t, self.hidden_size).transpose(1, 2)

    def forward(self, sequence: torch.Tensor, next_sequence: torch.Tensor | None = None,
                state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        hiddens = self.unroll(sequence, state)
        out = self.head(hiddens)
        if next_sequence is None:
            return out, None
        next_out, _ = self.step(next_sequence, hiddens)
        return out, next_out


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``logits`` [..., K] with unavailable actions (``mask`` False) set to -inf.

    Example:
        >>> masked_logits(torch.zeros(1, 2), torch.tensor([[True, False]]))
        tensor([[0., -inf]])
    """
    return logits if mask is None else logits.masked_fill(~mask, float("-inf"))


def categorical_log_prob(logits: torch.Tensor, action: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """log pi(a | ·) of action indices [...] under masked logits [..., K] -> [...] (float32).

    Example:
        >>> categorical_log_prob(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([[True, True, False]]))
        tensor([-0.6931])
    """
    log_pi = torch.log_softmax(masked_logits(logits, mask).float(), -1)
    return log_pi.gather(-1, action.unsqueeze(-1)).squeeze(-1)
