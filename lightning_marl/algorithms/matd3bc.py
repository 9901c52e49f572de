"""MA-TD3+BC (METHODS.md §5): per-agent TD3 twin critics, a deterministic actor regularised to the data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_marl.algorithms.base import CONTINUOUS, OfflineMARLModule
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.nets.critics import AgentQ
from lightning_marl.nets.deterministic import DeterministicActor
from lightning_marl.registry import register


@dataclass
class MATD3BCConfig(AlgorithmConfig):
    """MA-TD3+BC's hyper-parameters (METHODS.md §5 defaults).

    Example:
        >>> c = MATD3BCConfig()
        >>> c.alpha, c.policy_noise, c.noise_clip, c.policy_delay, c.normalise_observations
        (2.5, 0.2, 0.5, 2, True)
    """

    name: str = "matd3bc"
    alpha: float = 2.5  # lambda = alpha / mean|Q_i(o_i, pi_i(o_i))|
    policy_noise: float = 0.2  # target policy smoothing noise (std) ...
    noise_clip: float = 0.5  # ... clipped at ±noise_clip
    policy_delay: int = 2  # the actor's optimiser and the targets step every policy_delay critic steps
    normalise_observations: bool = True


@register("algorithm", "matd3bc")
class MATD3BC(OfflineMARLModule):
    """MA-TD3+BC: TD3 per agent (twin critics Q_i(o_i, a_i), target policy smoothing, delayed
    actor and targets) with the actor loss -lambda·Q_i(o_i, pi_i(o_i)) + mean_A (pi_i(o_i) - a_i)²,
    lambda = alpha / mean_batch|Q_i| (detached, one per agent); observations normalised.

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> module = MATD3BC.from_spec(spec, hidden=[8, 8])
        >>> sorted(module.parameter_groups()), module.act(torch.zeros(5, 2, 3)).shape
        (['policy', 'q'], torch.Size([5, 2, 2]))
    """

    config_class = MATD3BCConfig
    supports = (CONTINUOUS,)
    hooks = ("augment_batch", "critic_target")

    def build(self) -> None:
        spec, hidden = self.spec, self.config.hidden
        self.actor = DeterministicActor(spec.obs_dim, spec.action_dim, spec.n_agents, hidden)
        self.q = AgentQ(spec.obs_dim, spec.n_agents, hidden, action_dim=spec.action_dim)
        self.actor_target = self.add_target(self.actor)
        self.q_target = self.add_target(self.q)

    def parameter_groups(self):
        return {"policy": [self.actor], "q": [self.q]}

    # ---- the delayed schedule: the actor's loss, optimiser and the targets every k critic steps ----
    def policy_due(self) -> bool:
        """Whether this iteration steps the actor and the targets (iterations k-1, 2k-1, ...)."""
        return (self.iteration + 1) % self.config.policy_delay == 0

    def groups_to_step(self):
        return self.group_parameters.keys() if self.policy_due() else ("q",)

    def targets_due(self) -> bool:
        return self.policy_due()

    # ---- losses ---------------------------------------------------------------------------
    @torch.no_grad()
    def td_target(self, batch, next_observation: torch.Tensor) -> torch.Tensor:
        """r + gamma (1-d) min_k Q̄_k(o'_i, clip(pī(o'_i) + clip(noise))): [B, N]."""
        c = self.config
        next_action = self.actor_target(next_observation)
        noise = (torch.randn(next_action.shape, device=next_action.device, generator=self.rng) * c.policy_noise).clamp(-c.noise_clip, c.noise_clip)
        next_action = (next_action + noise).clamp(-1.0, 1.0)
        q_next = self.q_target(next_observation, next_action).min(0).values
        target = self.bootstrap(batch, q_next)
        return self.critic_target(batch, target)

    def critic_loss(self, batch, observation, next_observation, intermediates: dict) -> torch.Tensor:
        target = self.td_target(batch, next_observation)
        q = self.q(observation, batch.get(schema.ACTION))
        intermediates.update(q=q, target=target)
        return F.mse_loss(q, target.expand_as(q)) * q.shape[0]  # sum over the twins of each one's mean

    def policy_q(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q_1(o_i, a_i) [.., N] with the critic's weights frozen (the gradient reaches the action)."""
        return self.q(observation, action, members=1, frozen=True).squeeze(0)  # a view: no select backward

    def actor_loss(self, batch, observation, intermediates: dict) -> torch.Tensor:
        pi = self.actor(observation)
        q_pi = self.policy_q(observation, pi)
        lam = self.config.alpha / q_pi.abs().mean(0).detach().clamp(min=1e-6)  # [N]: one per agent
        bc = ((pi - batch.get(schema.ACTION)) ** 2).mean(-1)
        intermediates.update(pi=pi, q_pi=q_pi, lam=lam, bc=bc)
        return (-lam * q_pi + bc).mean()

    def losses(self, batch, intermediates: dict | None = None):
        intermediates = {} if intermediates is None else intermediates
        observation = self.normalise_observation(batch.get(schema.OBS))
        next_observation = self.normalise_observation(batch.get(schema.NEXT_OBS))
        losses = {"q": self.critic_loss(batch, observation, next_observation, intermediates)}
        if self.loss_due("policy"):
            losses["policy"] = self.actor_loss(batch, observation, intermediates)
        return losses

    def act(self, observation, mask=None):
        return self.actor(self.normalise_observation(observation))
