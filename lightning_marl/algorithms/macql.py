"""MA-CQL: per-agent twin critics with SAC actors and the CQL penalty (METHODS.md §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lightning_marl.algorithms.base import CONTINUOUS, OfflineMARLModule
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.nets import AgentQ, TanhGaussianActor
from lightning_marl.nets.sampling import tanh_gaussian_rsample
from lightning_marl.registry import register


class TwinQ(nn.Module):
    """Two per-agent critics Q_i(o_i, a_i) (shared weights, agent id; stacked parameters, see
    ``AgentQ``), twins on the LAST dimension: [..., N, O], [..., N, A] -> [..., N, 2]. The
    observation is broadcast over extra leading action dimensions (sampled actions).

    Example:
        >>> TwinQ(obs_dim=3, action_dim=2, n_agents=2, hidden=(8, 8))(torch.zeros(5, 2, 3), torch.zeros(5, 2, 2)).shape
        torch.Size([5, 2, 2])
    """

    def __init__(self, obs_dim: int, action_dim: int, n_agents: int, hidden=(256, 256)):
        super().__init__()
        self.critics = AgentQ(obs_dim, n_agents, hidden, action_dim=action_dim)

    def forward(self, observation: torch.Tensor, action: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        observation = observation.expand(*action.shape[:-1], observation.shape[-1])
        return self.critics(observation, action, frozen=frozen).movedim(0, -1)


class LogTemperature(nn.Module):
    """The learned entropy temperature, stored as its log (its own parameter group).

    Example:
        >>> LogTemperature(0.5).value.exp()
        tensor(0.5000, grad_fn=<ExpBackward0>)
    """

    def __init__(self, initial: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(math.log(initial)))


def cql_gap(q_samples: torch.Tensor, log_density: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
    """logsumexp_j [Q(o, a_j) - log p(a_j)] - Q(o, a^D) per agent and twin.

    q_samples [B, M, N, 2] at M sampled actions, log_density [B, M, N], q_data [B, N, 2] -> [B, N, 2].

    Example:
        >>> q = torch.zeros(1, 2, 1, 1)                          # two samples of value 0
        >>> cql_gap(q, torch.log(torch.tensor([[[0.5], [0.5]]])), torch.zeros(1, 1, 1))  # log(2 + 2)
        tensor([[[1.3863]]])
    """
    return (q_samples - log_density.unsqueeze(-1)).logsumexp(1) - q_data


def twin_sum(values: torch.Tensor) -> torch.Tensor:
    """Mean over everything but the last (twin) dimension, summed over the twins: each critic its own loss."""
    return values.reshape(-1, values.shape[-1]).mean(0).sum()


@dataclass
class MACQLConfig(AlgorithmConfig):
    name: str = "macql"
    alpha: float = 1.0  # CQL weight [choice: 5.0 for expert data]
    cql_samples: int = 10  # actions per source: uniform, pi(.|o_i), pi(.|o'_i)
    learn_temperature: bool = True  # [choice] learned entropy temperature (target entropy) or fixed
    temperature: float = 1.0  # initial value when learned, the value when fixed
    target_entropy: Optional[float] = None  # None: -action_dim
    backup_entropy: bool = True  # [choice] soft TD target (- temperature · log pi(a'|o')); False: plain min Q̄
    normalise_observations: bool = False


@register("algorithm", "macql")
class MACQL(OfflineMARLModule):
    """MA-CQL: per-agent twin critics Q_i(o_i, a_i) and tanh-Gaussian SAC actors with a CQL penalty
    alpha·(logsumexp_j [Q_i(o_i, a_j) - log p(a_j)] - Q_i(o_i, a_i^D)) over uniform actions and the
    policy's actions at o_i and o'_i. Continuous actions; team reward; truncation bootstraps.

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> sorted(MACQL.from_spec(spec, hidden=[8, 8]).parameter_groups())
        ['policy', 'q', 'temperature']
        >>> sorted(MACQL.from_spec(spec, hidden=[8, 8], learn_temperature=False).parameter_groups())
        ['policy', 'q']
    """

    config_class = MACQLConfig
    supports = (CONTINUOUS,)
    hooks = ("augment_batch",)  # per-agent targets [B, N]: the critic_target hook's contract is [B, 1]

    def build(self) -> None:
        spec, c = self.spec, self.config
        o, a, n = spec.obs_dim, spec.action_dim, spec.n_agents
        self.actor = TanhGaussianActor(o, a, n, c.hidden)
        self.q = TwinQ(o, a, n, c.hidden)
        self.q_target = self.add_target(self.q)
        if c.learn_temperature:
            self.log_temperature = LogTemperature(c.temperature)
        self.target_entropy = float(-a if c.target_entropy is None else c.target_entropy)

    def parameter_groups(self):
        groups = {"policy": [self.actor], "q": [self.q]}
        if self.config.learn_temperature:
            groups["temperature"] = [self.log_temperature]
        return groups

    def temperature(self) -> torch.Tensor:
        if self.config.learn_temperature:
            return self.log_temperature.value.exp()
        return torch.tensor(self.config.temperature, device=self.device)

    def cql_samples(self, observation, next_observation):
        """Actions a_j [B, 3S, N, A] and log p(a_j) [B, 3S, N]: S uniform, S from pi(.|o), S from pi(.|o')."""
        b, n, a = *observation.shape[:2], self.spec.action_dim
        s = self.config.cql_samples
        uniform = torch.rand(b, s, n, a, device=observation.device, generator=self.rng) * 2 - 1
        uniform_log_density = torch.full((b, s, n), -a * math.log(2), device=observation.device)
        current, current_log_density = tanh_gaussian_rsample(self.actor, observation, s, generator=self.rng)
        following, following_log_density = tanh_gaussian_rsample(self.actor, next_observation, s, generator=self.rng)
        return (torch.cat([uniform, current, following], 1),
                torch.cat([uniform_log_density, current_log_density, following_log_density], 1))

    def losses(self, batch, intermediates: dict | None = None):
        c = self.config
        observation = self.normalise_observation(batch.get(schema.OBS))
        next_observation = self.normalise_observation(batch.get(schema.NEXT_OBS))
        action = batch.get(schema.ACTION)
        temperature = self.temperature()
        with torch.no_grad():
            next_action, next_log_pi = tanh_gaussian_rsample(self.actor, next_observation, generator=self.rng)
            next_q = self.q_target(next_observation, next_action).min(-1).values  # [B, N]
            soft_value = next_q - temperature * next_log_pi if c.backup_entropy else next_q
            target = self.bootstrap(batch, soft_value)  # [B, N]
            samples, log_density = self.cql_samples(observation, next_observation)
        q_data = self.q(observation, action)  # [B, N, 2]
        td_loss = twin_sum((q_data - target.unsqueeze(-1)) ** 2)
        q_samples = self.q(observation.unsqueeze(1), samples)  # [B, 3S, N, 2], evaluated at o_i
        gap = cql_gap(q_samples, log_density, q_data)
        q_loss = td_loss + c.alpha * twin_sum(gap)

        new_action, log_pi = tanh_gaussian_rsample(self.actor, observation, generator=self.rng)
        q_pi = self.q(observation, new_action, frozen=True).min(-1).values
        losses = {"policy": (temperature.detach() * log_pi - q_pi).mean(), "q": q_loss}
        if c.learn_temperature:
            losses["temperature"] = -(self.log_temperature.value * (log_pi.detach() + self.target_entropy)).mean()
        if intermediates is not None:
            intermediates.update(target=target, q_data=q_data, samples=samples, log_density=log_density,
                                 q_samples=q_samples, gap=gap, td_loss=td_loss, log_pi=log_pi)
        return losses

    @torch.no_grad()
    def act(self, observation, mask=None):
        """tanh of the actor's mean: [..., N, O] -> [..., N, A] in [-1, 1]."""
        return self.actor.act(self.normalise_observation(observation))
