"""OMIGA: offline MARL with implicit global-to-local value regularisation (METHODS.md §1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_marl.algorithms.base import CONTINUOUS, DISCRETE, OfflineMARLModule
from lightning_marl.algorithms.qmix_cql import chosen
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.nets import AgentMLP, OMIGAMixer, stochastic_actor
from lightning_marl.nets.recurrent import RecurrentOptions, categorical_log_prob, masked_logits
from lightning_marl.registry import register


@dataclass
class OMIGAConfig(RecurrentOptions, AlgorithmConfig):
    name: str = "omiga"
    steps: int = 1_000_000
    lr: float = 5e-4
    alpha: float = 10.0
    mixer_hidden: int = 64
    z_clip: float = 10.0


@register("algorithm", "omiga")
class OMIGA(OfflineMARLModule):
    """OMIGA: Q_tot and V_tot mixed with the same weights; local V by an implicit regulariser;
    the actor by exp(z)-weighted behaviour cloning. No out-of-distribution action is queried.
    ``recurrent=True`` (discrete): GRU actor, Q_i and V_i over [B, T] episode slices (targets
    unrolled over the same slice); the mixer stays a function of the state; the losses and the
    max-z stabiliser run over the slices' real steps only.

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> module = OMIGA.from_spec(spec, alpha=1.0, hidden=[8, 8], mixer_hidden=4)
        >>> sorted(module.parameter_groups())
        ['policy', 'q', 'v']
    """

    config_class = OMIGAConfig
    supports = (CONTINUOUS, DISCRETE)
    hooks = ("augment_batch", "critic_target")

    def build(self) -> None:
        spec, c = self.spec, self.config
        n, o = spec.n_agents, spec.obs_dim
        if self.recurrent:  # discrete only: logits, Q_i(o_i, .) and V_i(o_i) from GRU agent networks
            self.actor, self.q = self.gru_agent(spec.n_actions), self.gru_agent(spec.n_actions)
            self.v = self.gru_agent(1)
        else:
            self.actor = stochastic_actor(spec, c.hidden)
            if spec.discrete:
                self.q = AgentMLP(o, spec.n_actions, n, c.hidden)
            else:
                self.q = AgentMLP(o + spec.action_dim, 1, n, c.hidden)
            self.v = AgentMLP(o, 1, n, c.hidden)
        self.mixer = OMIGAMixer(spec.mixer_state_dim, n, c.mixer_hidden)
        self.q_target = self.add_target(self.q)
        self.v_target = self.add_target(self.v)
        self.mixer_target = self.add_target(self.mixer)

    def parameter_groups(self):
        return {"policy": [self.actor], "q": [self.q, self.mixer], "v": [self.v]}

    def local_q(self, net, observation, action) -> torch.Tensor:
        """Q_i(o_i, a_i): [B, N]."""
        if self.spec.discrete:
            return net(observation).gather(-1, action.unsqueeze(-1)).squeeze(-1)
        return net(observation, action).squeeze(-1)

    def agent_q_values(self, net, batch) -> torch.Tensor:
        """Q_i(o_i, a_i) at the dataset's actions, [B, N] (recurrent: [B, T, N], unrolled over the slices)."""
        if self.recurrent:
            return chosen(self.unrolled(net, batch), batch.get(schema.ACTION))
        return self.local_q(net, batch.get(schema.OBS), batch.get(schema.ACTION))

    def agent_v_values(self, net, batch, next: bool = False) -> torch.Tensor:
        """V_i(o_i) (or V_i(o'_i) with ``next=True``), [B, N] (recurrent: [B, T, N])."""
        if self.recurrent:
            return self.unrolled(net, batch, next=next).squeeze(-1)
        return net(batch.get(schema.NEXT_OBS if next else schema.OBS)).squeeze(-1)

    def behaviour_log_prob(self, batch) -> torch.Tensor:
        """log pi_i(a_i | o_i) of the dataset's actions, [B, N] (recurrent: [B, T, N])."""
        action, mask = batch.get(schema.ACTION), self.action_mask(batch)
        if self.recurrent:
            return categorical_log_prob(self.unrolled(self.actor, batch), action, mask)
        return self.actor.log_prob(batch.get(schema.OBS), action, mask)

    def losses(self, batch, intermediates: dict | None = None):
        c = self.config
        state, next_state = self.mixer_state(batch), self.mixer_state(batch, next=True)
        with torch.no_grad():
            w_target, _ = self.mixer_target(state)
            q_target = self.agent_q_values(self.q_target, batch)
            w_next, b_next = self.mixer_target(next_state)
            v_next = self.agent_v_values(self.v_target, batch, next=True)
            v_tot_next = OMIGAMixer.mix(v_next, w_next, b_next)
            target = self.bootstrap(batch, v_tot_next)
            target = self.critic_target(batch, target)

        w, b = self.mixer(state)
        q_tot = OMIGAMixer.mix(self.agent_q_values(self.q, batch), w, b)
        q_loss = self.mean_squared_error(batch, q_tot, target)

        # Recurrent slices: rows() keeps the real steps [M, N], so the max-z stabiliser skips padding.
        v = self.agent_v_values(self.v, batch)
        z = ((w_target * q_target - w_target * v) / c.alpha).clamp(-c.z_clip, c.z_clip)
        z_rows = self.rows(batch, z)
        m = torch.clamp(z_rows.detach().max(), min=-1.0)
        v_loss = (torch.exp(z_rows - m) + torch.exp(-m) * self.rows(batch, w_target * v) / c.alpha).mean()

        log_pi = self.behaviour_log_prob(batch)
        policy_loss = -(torch.exp(z_rows).detach() * self.rows(batch, log_pi)).mean()
        if intermediates is not None:
            intermediates.update(q_target_i=q_target, v_i=v, w_target=w_target, log_pi=log_pi, z=z)
        return {"policy": policy_loss, "q": q_loss, "v": v_loss}

    def act(self, observation, mask=None):
        if self.recurrent:
            return masked_logits(self.policy_step(self.actor, observation), mask).argmax(-1)
        return self.actor.act(observation, mask)
