"""OMIGA: offline MARL with implicit global-to-local value regularisation (METHODS.md §1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_marl.algorithms.base import CONTINUOUS, DISCRETE, OfflineMARLModule
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.nets import AgentMLP, OMIGAMixer, stochastic_actor
from lightning_marl.registry import register


@dataclass
class OMIGAConfig(AlgorithmConfig):
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
        return net(torch.cat([observation, action], dim=-1)).squeeze(-1)

    def losses(self, batch, intermediates: dict | None = None):
        c = self.config
        observation, action = batch.get(schema.OBS), batch.get(schema.ACTION)
        state, next_state = self.mixer_state(batch), self.mixer_state(batch, next=True)
        with torch.no_grad():
            w_target, _ = self.mixer_target(state)
            q_target = self.local_q(self.q_target, observation, action)
            w_next, b_next = self.mixer_target(next_state)
            v_next = self.v_target(batch.get(schema.NEXT_OBS)).squeeze(-1)
            v_tot_next = OMIGAMixer.mix(v_next, w_next, b_next)
            target = batch.get(schema.REWARD) + c.gamma * self.not_terminated(batch) * v_tot_next
            target = self.critic_target(batch, target)

        w, b = self.mixer(state)
        q_tot = OMIGAMixer.mix(self.local_q(self.q, observation, action), w, b)
        q_loss = ((target - q_tot) ** 2).mean()

        v = self.v(observation).squeeze(-1)
        z = ((w_target * q_target - w_target * v) / c.alpha).clamp(-c.z_clip, c.z_clip)
        m = torch.clamp(z.detach().max(), min=-1.0)
        v_loss = (torch.exp(z - m) + torch.exp(-m) * w_target * v / c.alpha).mean()

        log_pi = self.actor.log_prob(observation, action, self.action_mask(batch))
        policy_loss = -(torch.exp(z).detach() * log_pi).mean()
        if intermediates is not None:
            intermediates.update(q_target_i=q_target, v_i=v, w_target=w_target, log_pi=log_pi, z=z)
        return {"policy": policy_loss, "q": q_loss, "v": v_loss}

    def act(self, observation, mask=None):
        return self.actor.act(observation, mask)
