"""The QMIX monotonic mixer: torchrl's hypernetworks, mixing many joint actions per state at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchrl.modules import QMixer


class QMIXMixer(QMixer):
    """torchrl's ``QMixer`` (hypernetworks on the state, embed 32, monotonic in each agent's value).

    Its parameters and its ``forward(values [*B, N, 1], state [*B, S]) -> [*B, 1]`` are torchrl's.
    ``mix_values(values [*B, *M, N], state [*B, S]) -> [*B, *M, 1]`` computes the same mixing
    for any number M of joint actions per state with ONE hypernetwork pass per state (torchrl's
    ``forward`` needs the state repeated for every joint action): counterfactual Q_tot over
    every agent's every action costs a batched matmul, not N·K hypernetwork passes.

    Example:
        >>> mixer = QMIXMixer(state_dim=4, n_agents=2, embed_dim=8)
        >>> values, state = torch.randn(5, 2), torch.randn(5, 4)
        >>> torch.allclose(mixer.mix_values(values, state), mixer(values.unsqueeze(-1), state))
        True
        >>> mixer.mix_values(torch.randn(5, 2, 3, 2), state).shape   # 6 joint actions per state
        torch.Size([5, 2, 3, 1])
    """

    def __init__(self, state_dim: int, n_agents: int, embed_dim: int = 32):
        super().__init__(state_shape=(state_dim,), mixing_embed_dim=embed_dim, n_agents=n_agents, device=None)

    def hypernetwork(self, state: torch.Tensor):
        """The state's mixing parameters: w1 [B, N, E] (>= 0), b1 [B, 1, E], w2 [B, E, 1] (>= 0), v [B, 1, 1].

        The four layers that read the state (w1, b1, w2 and V's first) run as one product over
        their concatenated weights: one matmul and one weight-gradient instead of four."""
        state = state.reshape(-1, self.state_dim)
        first = (self.hyper_w_1, self.hyper_w_final, self.hyper_b_1, self.V[0])  # nn.Linear each in torchrl's QMixer
        out = F.linear(state, torch.cat([layer.weight for layer in first]), torch.cat([layer.bias for layer in first]))
        weights, b1, v_hidden = out.split([(self.n_agents + 1) * self.embed_dim, self.embed_dim, self.embed_dim], -1)
        w1, w2 = weights.abs().split([self.n_agents * self.embed_dim, self.embed_dim], -1)  # one abs for both
        v = self.V[2](torch.relu(v_hidden))
        return (w1.view(-1, self.n_agents, self.embed_dim), b1.reshape(-1, 1, self.embed_dim),
                w2.reshape(-1, self.embed_dim, 1), v.view(-1, 1, 1))

    def mix_values(self, values: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Q_tot for per-agent values [*B, *M, N] (M joint actions per state) and state [*B, S]."""
        lead = state.shape[:-1]
        w1, b1, w2, v = self.hypernetwork(state)
        flat = values.reshape(w1.shape[0], -1, self.n_agents)
        if flat.shape[1] == 1:  # one joint action per state: broadcast products beat B tiny matmuls
            hidden = F.elu((flat.transpose(1, 2) * w1).sum(1, keepdim=True) + b1)
            out = (hidden.transpose(1, 2) * w2).sum(1, keepdim=True) + v
        else:
            hidden = F.elu(torch.bmm(flat, w1) + b1)
            out = torch.bmm(hidden, w2) + v
        return out.view(*lead, *values.shape[len(lead):-1], 1)
