"""QMIX-CQL: QMIX value decomposition with double-Q targets and a per-agent CQL penalty (METHODS.md §5, §4)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lightning_marl.algorithms.base import DISCRETE, OfflineMARLModule
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.nets import AgentMLP
from lightning_marl.nets.qmix import QMIXMixer
from lightning_marl.nets.recurrent import RecurrentOptions
from lightning_marl.registry import register


def masked(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``values`` [..., K] with unavailable actions (``mask`` False) set to -inf."""
    return values if mask is None else values.masked_fill(~mask, float("-inf"))


def greedy(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The best AVAILABLE action of each agent: [..., N, K] -> indices [..., N].

    A row with no available action (some datasets mark none at terminal states) gets action 0;
    its value is then multiplied by (1 - terminated) = 0.
    """
    return masked(values, mask).argmax(-1)


def chosen(values: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q_i(o_i, a_i): values [..., N, K] gathered at action indices [..., N] -> [..., N]."""
    return values.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def cql_gap(values: torch.Tensor, action: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """logsumexp over available actions of Q_i(o_i, .) minus Q_i(o_i, a_i): [..., N, K] -> [..., N].

    Example:
        >>> values = torch.tensor([[[1.0, 2.0, 50.0]]])            # one row, one agent, 3 actions
        >>> mask = torch.tensor([[[True, True, False]]])            # action 2 unavailable
        >>> cql_gap(values, torch.tensor([[0]]), mask)              # log(e + e^2) - 1
        tensor([[1.3133]])
    """
    return chosen_and_gap(values, action, mask)[1]


def chosen_and_gap(values: torch.Tensor, action: torch.Tensor,
                   mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen(values, action), cql_gap(values, action, mask))``, [..., N] each, from one pass: the
    data action's value is gathered once, and while gradients are recorded both are one autograd
    node (the gather's own backward would fill and scatter a second [..., N, K] gradient).

    Example:
        >>> values = torch.tensor([[[1.0, 2.0, 50.0]]], requires_grad=True)
        >>> data, gap = chosen_and_gap(values, torch.tensor([[1]]), torch.tensor([[[True, True, False]]]))
        >>> data, gap
        (tensor([[2.]], grad_fn=<_CQLGapBackward>), tensor([[0.3133]], grad_fn=<_CQLGapBackward>))
    """
    if torch.is_grad_enabled() and values.requires_grad:
        return _CQLGap.apply(values, action, mask)
    gap, _, _, _, data = _cql_gap(values, action, mask)
    return data.squeeze(-1).to(values.dtype), gap


def _cql_gap(values: torch.Tensor, action: torch.Tensor, mask: torch.Tensor | None):
    """The gap (at least float32) and, for the backward, exp(masked values - their max), its sum over
    actions, the action indices [..., N, 1] and the data action's values [..., N, 1]."""
    if values.dtype not in (torch.float32, torch.float64):  # (torch.promote_types is itself a dispatched call)
        values = values.float()
    available = masked(values, mask)
    # A row without available actions: its max is -inf; clamped, its logsumexp stays -inf (as torch's).
    top = available.amax(-1, keepdim=True).clamp_(min=torch.finfo(values.dtype).min)
    weights = (available - top).exp_()
    total = weights.sum(-1, keepdim=True)
    index = action.unsqueeze(-1)
    data = values.gather(-1, index)
    gap = (total.log() + top - data).squeeze(-1)
    return gap, weights, total, index, data


class _CQLGap(torch.autograd.Function):
    """``chosen_and_gap`` as one autograd node. The gap's gradient is the softmax over available
    actions minus the one-hot of the data action, from the exponentials the forward computed (the
    logsumexp, masking and gather would otherwise each record their own backward); the chosen
    value's gradient joins the same one-hot scatter."""

    @staticmethod
    def forward(ctx, values, action, mask):
        gap, weights, total, index, data = _cql_gap(values, action, mask)
        ctx.save_for_backward(weights, total, index)
        ctx.dtype = values.dtype
        ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros
        return data.squeeze(-1).to(values.dtype), gap

    @staticmethod
    def backward(ctx, grad_data, grad_gap):
        weights, total, index = ctx.saved_tensors
        if grad_gap is None and grad_data is None:
            return None, None, None
        if grad_gap is None:
            grad_values, at_action = torch.zeros_like(weights), grad_data.unsqueeze(-1).to(weights.dtype)
        else:
            grad_gap = grad_gap.unsqueeze(-1)
            grad_values = weights * (grad_gap / total)
            at_action = -grad_gap if grad_data is None else grad_data.unsqueeze(-1).to(weights.dtype) - grad_gap
        grad_values.scatter_add_(-1, index, at_action)
        return grad_values.to(ctx.dtype), None, None


@dataclass
class QMIXCQLConfig(RecurrentOptions, AlgorithmConfig):
    name: str = "qmix_cql"
    alpha: float = 1.0  # weight of the CQL penalty
    mixer_embed: int = 32  # QMIX hypernetwork embedding
    normalise_observations: bool = False  # [choice] off: discrete (SMAC-like) features come pre-scaled
    normalise_state: bool = True  # the mixer's hypernetworks see the state standardised by dataset statistics


@register("algorithm", "qmix_cql")
class QMIXCQL(OfflineMARLModule):
    """QMIX-CQL: agent Q_i(o_i, .) (shared, agent id) mixed by QMIX; double-Q TD targets; a CQL
    penalty alpha·mean_i(logsumexp over available actions of Q_i - Q_i(a_i)). Discrete actions.

    For plugins (offline value memory): ``q_tot(batch, agent_net, mixer)`` mixes any pair of
    agent network and mixer (``q``/``mixer``, ``q_target``/``mixer_target`` or a ``frozen_copy()``);
    ``next_value(batch)`` is the double-Q Q̄_tot(s', a') and ``td_target(batch)`` the TD target before
    the ``critic_target`` hook.

    ``recurrent=True``: Q_i is a GRU agent network unrolled over [B, T] episode slices (online and
    target networks over the same slice; o'_t evaluated from the hidden state after step t), every
    value above is then [B, T, ...] and the losses average over the slices' real steps only.

    Example:
        >>> from lightning_marl.collect.matrix import matrix_game_transitions
        >>> batch, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1)], [0.5, 0.5], n=8)
        >>> module = QMIXCQL.from_spec(spec, hidden=[16, 16], mixer_embed=8)
        >>> sorted(module.train_step(batch))
        ['grad_norm/q', 'loss/q']
        >>> module.q_tot(batch, module.q, module.mixer).shape, module.act(batch["agents", "observation"]).shape
        (torch.Size([8, 1]), torch.Size([8, 2]))
    """

    config_class = QMIXCQLConfig
    supports = (DISCRETE,)
    hooks = ("augment_batch", "critic_target")

    def build(self) -> None:
        spec, c = self.spec, self.config
        if self.recurrent:
            self.q = self.gru_agent(spec.n_actions)
        else:
            self.q = AgentMLP(spec.obs_dim, spec.n_actions, spec.n_agents, c.hidden)
        self.mixer = QMIXMixer(spec.mixer_state_dim, spec.n_agents, c.mixer_embed)
        self.q_target = self.add_target(self.q)
        self.mixer_target = self.add_target(self.mixer)

    def parameter_groups(self):
        return {"q": [self.q, self.mixer]}

    def policy_prefixes(self) -> tuple[str, ...]:
        return ("q.", "obs_")

    # ---- values (public: plugins build on these) -------------------------------------------
    def agent_q(self, agent_net: nn.Module, observation: torch.Tensor) -> torch.Tensor:
        """Q_i(o_i, .) of every agent: [..., N, O] -> [..., N, K]."""
        return agent_net(self.normalise_observation(observation))

    def agent_values(self, agent_net: nn.Module, batch, next: bool = False) -> torch.Tensor:
        """Q_i(o_i, .) [..., N, K] at the batch's o (or o' with ``next=True``); a recurrent agent
        network is unrolled over the batch's slices."""
        if self.recurrent:
            return self.unrolled(agent_net, batch, next=next)
        return self.agent_q(agent_net, batch.get(schema.NEXT_OBS if next else schema.OBS))

    def q_tot(self, batch, agent_net: nn.Module, mixer: QMIXMixer, action: torch.Tensor | None = None,
              next: bool = False) -> torch.Tensor:
        """Q_tot(s, a) [B, 1] of ``agent_net`` mixed by ``mixer``; a = the dataset's joint action by
        default; ``next=True`` evaluates at (s', o') (then ``action`` is required)."""
        if action is None:
            if next:
                raise ValueError("q_tot(next=True) needs the next joint action")
            action = batch.get(schema.ACTION)
        values = chosen(self.agent_values(agent_net, batch, next=next), action)
        return mixer.mix_values(values, self.mixer_state(batch, next=next))

    def frozen_copy(self) -> tuple[nn.Module, QMIXMixer]:
        """A frozen deep copy of the online agent network and mixer (e.g. an offline value memory)."""
        q, mixer = copy.deepcopy(self.q), copy.deepcopy(self.mixer)
        return q.requires_grad_(False), mixer.requires_grad_(False)

    def online_values(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The online network's Q_i(o_i, .) (with gradients) and Q_i(o'_i, .) (without; None for a
        recurrent network), [..., N, K] each, from one pass over o and o' (``AgentMLP.pair``)."""
        if self.recurrent or not hasattr(self.q, "pair"):  # a recurrent (or user-substituted) network
            return self.agent_values(self.q, batch), None
        observation, next_observation = batch.get(schema.OBS), batch.get(schema.NEXT_OBS)
        return self.q.pair(self.normalise_observation(observation), self.normalise_observation(next_observation))

    @torch.no_grad()
    def next_value(self, batch, online_next: torch.Tensor | None = None) -> torch.Tensor:
        """Double Q: Q̄_tot(s', a') [B, 1] at a'_i = argmax over available actions of Q_i(o'_i, .)
        (``online_next``: those online values when already computed)."""
        online_next = self.agent_values(self.q, batch, next=True) if online_next is None else online_next
        next_action = greedy(online_next, self.action_mask(batch, next=True))
        return self.q_tot(batch, self.q_target, self.mixer_target, next_action, next=True)

    @torch.no_grad()
    def td_target(self, batch, next_value: torch.Tensor | None = None) -> torch.Tensor:
        """r + gamma (1 - terminated) ``next_value`` [B, 1] (before the critic_target hook)."""
        next_value = self.next_value(batch) if next_value is None else next_value
        return self.bootstrap(batch, next_value)

    # ---- losses ----------------------------------------------------------------------------
    def conservative_penalty(self, batch, values: torch.Tensor, intermediates: dict | None,
                             gap: torch.Tensor) -> torch.Tensor:
        """mean over batch and agents of ``gap`` = logsumexp_available Q_i - Q_i(a_i) [..., N], which
        ``losses`` computes with the data actions' values (``chosen_and_gap``). Subclasses replace
        it and may use the agents' values [..., N, K] too."""
        if intermediates is not None:
            intermediates["cql_gap"] = gap
        return self.rows(batch, gap).mean()

    def losses(self, batch, intermediates: dict | None = None):
        values, online_next = self.online_values(batch)
        with torch.no_grad():
            target = self.critic_target(batch, self.td_target(batch, self.next_value(batch, online_next)))
        data_values, gap = chosen_and_gap(values, batch.get(schema.ACTION), self.action_mask(batch))
        penalty = self.conservative_penalty(batch, values, intermediates, gap)
        q_tot = self.mixer.mix_values(data_values, self.mixer_state(batch))
        td_loss = self.mean_squared_error(batch, q_tot, target)
        if intermediates is not None:
            intermediates.update(target=target, q_tot=q_tot, td_loss=td_loss, penalty=penalty)
        alpha = self.config.alpha
        return {"q": td_loss + (penalty if alpha == 1.0 else alpha * penalty)}  # no product by 1 (nor its backward)

    @torch.no_grad()
    def act(self, observation, mask=None):
        """The greedy available action of each agent under its own Q_i: [..., N, O] -> [..., N]
        (recurrent: one step from each env's carried hidden state)."""
        if self.recurrent:
            return greedy(self.policy_step(self.q, observation), mask)
        return greedy(self.agent_q(self.q, observation), mask)
