"""Behaviour cloning: maximise log pi_i(a_i | o_i) of the dataset's actions (METHODS.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_marl.algorithms.base import CONTINUOUS, DISCRETE, OfflineMARLModule
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.nets import CategoricalActor, TanhGaussianActor
from lightning_marl.registry import register


@dataclass
class BCConfig(AlgorithmConfig):
    name: str = "bc"


@register("algorithm", "bc")
class BC(OfflineMARLModule):
    """Behaviour cloning with a tanh-Gaussian (continuous) or masked categorical (discrete) actor.

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
        spec, hidden = self.spec, self.config.hidden
        if spec.discrete:
            self.actor = CategoricalActor(spec.obs_dim, spec.n_actions, spec.n_agents, hidden)
        else:
            self.actor = TanhGaussianActor(spec.obs_dim, spec.action_dim, spec.n_agents, hidden)

    def parameter_groups(self):
        return {"policy": [self.actor]}

    def log_prob(self, batch):
        observation, action = batch.get(schema.OBS), batch.get(schema.ACTION)
        if self.spec.discrete:
            return self.actor.log_prob(observation, action, self.action_mask(batch))
        return self.actor.log_prob(observation, action)

    def losses(self, batch):
        return {"policy": -self.log_prob(batch).mean()}

    def act(self, observation, mask=None):
        return self.actor.act(observation, mask) if self.spec.discrete else self.actor.act(observation)
