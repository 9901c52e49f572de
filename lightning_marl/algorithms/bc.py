"""Behaviour cloning: maximise log pi_i(a_i | o_i) of the dataset's actions (METHODS.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_marl.algorithms.base import CONTINUOUS, DISCRETE, OfflineMARLModule
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.nets.actors import stochastic_actor
from lightning_marl.nets.recurrent import RecurrentOptions, categorical_log_prob, masked_logits
from lightning_marl.registry import register


@dataclass
class BCConfig(RecurrentOptions, AlgorithmConfig):
    name: str = "bc"


@register("algorithm", "bc")
class BC(OfflineMARLModule):
    """Behaviour cloning with a tanh-Gaussian (continuous) or masked categorical (discrete) actor;
    ``recurrent=True`` (discrete): a GRU actor over [B, T] episode slices, padding masked out.

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=1, state_dim=2, discrete=True, n_actions=3)
        >>> BC.from_spec(spec, hidden=[16, 16]).parameter_groups().keys()
        dict_keys(['policy'])
    """

    config_class = BCConfig
    supports = (CONTINUOUS, DISCRETE)
    hooks = ("augment_batch",)

    def build(self) -> None:
        if self.recurrent:
            self.actor = self.gru_agent(self.spec.n_actions)  # logits
        else:
            self.actor = stochastic_actor(self.spec, self.config.hidden)

    def parameter_groups(self):
        return {"policy": [self.actor]}

    def losses(self, batch):
        if self.recurrent:
            log_pi = categorical_log_prob(self.unrolled(self.actor, batch), batch.get(schema.ACTION),
                                          self.action_mask(batch))
            return {"policy": -self.rows(batch, log_pi).mean()}
        log_pi = self.actor.log_prob(batch.get(schema.OBS), batch.get(schema.ACTION), self.action_mask(batch))
        return {"policy": -log_pi.mean()}

    def act(self, observation, mask=None):
        if self.recurrent:
            return masked_logits(self.policy_step(self.actor, observation), mask).argmax(-1)
        return self.actor.act(observation, mask)
