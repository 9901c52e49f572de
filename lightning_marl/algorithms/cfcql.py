"""CFCQL: counterfactual conservative Q-learning on the QMIX Q_tot (METHODS.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_marl.algorithms.qmix_cql import QMIXCQL, QMIXCQLConfig, chosen, masked
from lightning_marl.data import schema
from lightning_marl.registry import register


def counterfactual_joint_values(values: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Per-agent values of every single-agent deviation from the dataset's joint action.

    values [B, N, K], action [B, N] -> [B, N, K, N]: entry [b, i, k] is the vector
    (Q_1(a_1), ..., Q_i(k), ..., Q_N(a_N)) in which only agent i plays k, the others a^D.

    Example:
        >>> values = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])        # 2 agents, 2 actions
        >>> counterfactual_joint_values(values, torch.tensor([[0, 1]]))[0]
        tensor([[[1., 4.],
                 [2., 4.]],
        <BLANKLINE>
                [[1., 3.],
                 [1., 4.]]])
    """
    b, n, k = values.shape
    data = chosen(values, action)[:, None, None, :].expand(b, n, k, n)
    deviate = torch.eye(n, dtype=torch.bool, device=values.device)[None, :, None, :]
    return torch.where(deviate, values.unsqueeze(-1), data)


def agent_weights(gap: torch.Tensor, beta_w: float) -> torch.Tensor:
    """lambda = softmax over agents of beta_w · d_i, d_i = mean over the batch of ``gap`` [B, N] (detached).

    Example:
        >>> agent_weights(torch.tensor([[0.0, 2.0]]), 0.0)
        tensor([0.5000, 0.5000])
    """
    return torch.softmax(beta_w * gap.detach().mean(0), dim=-1)


@dataclass
class CFCQLConfig(QMIXCQLConfig):
    name: str = "cfcql"
    beta_w: float = 0.5  # inverse temperature of the agent weights; 0 gives lambda_i = 1/n


@register("algorithm", "cfcql")
class CFCQL(QMIXCQL):
    """CFCQL: QMIX-CQL whose conservative term is counterfactual on Q_tot: c_i = logsumexp over
    agent i's available actions of Q_tot(s, a_i, a_-i^D) - Q_tot(s, a^D), weighted by
    lambda = softmax_i(beta_w · d_i), d_i = mean_batch(logsumexp Q_i - Q_i(a_i)). Discrete actions.

    Example:
        >>> from lightning_marl.collect.matrix import matrix_game_transitions
        >>> batch, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1)], [0.5, 0.5], n=8)
        >>> module = CFCQL.from_spec(spec, hidden=[16, 16], mixer_embed=8, beta_w=0.0)
        >>> parts = {}
        >>> _ = module.losses(batch, parts)
        >>> parts["agent_weights"], parts["counterfactual_gap"].shape
        (tensor([0.5000, 0.5000]), torch.Size([8, 2]))
    """

    config_class = CFCQLConfig

    def conservative_penalty(self, batch, values: torch.Tensor, intermediates: dict | None,
                             gap: torch.Tensor) -> torch.Tensor:
        # Recurrent [B, T] batches: the real steps of the slices as rows [M, ...] (identity for [B]).
        values, action, mask, state = (self.rows(batch, x) if x is not None else None for x in (
            values, batch.get(schema.ACTION), self.action_mask(batch), self.mixer_state(batch)))
        # All N·K single-agent deviations mixed in one hypernetwork pass: [B, N, K, N] -> [B, N, K].
        deviations = self.mixer.mix_values(counterfactual_joint_values(values, action), state).squeeze(-1)
        data_q_tot = self.mixer.mix_values(chosen(values, action), state)  # [B, 1]
        counterfactual_gap = masked(deviations, mask).logsumexp(-1) - data_q_tot  # c_i, [B, N]
        weights = agent_weights(self.rows(batch, gap), self.config.beta_w)  # lambda, [N], from the per-agent CQL gap
        if intermediates is not None:
            intermediates.update(counterfactual_gap=counterfactual_gap, agent_weights=weights)
        return (counterfactual_gap * weights).sum(-1).mean()
