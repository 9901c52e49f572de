"""OMAR (METHODS.md §5): TD3 critics with the CQL penalty, the actor pulled toward a searched action."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightning_marl.algorithms.base import CONTINUOUS
from lightning_marl.algorithms.matd3bc import MATD3BC
from lightning_marl.config import AlgorithmConfig
from lightning_marl.registry import register


@dataclass
class OMARConfig(AlgorithmConfig):
    """OMAR's hyper-parameters (METHODS.md §5 defaults).

    Example:
        >>> c = OMARConfig()
        >>> c.w, c.cql_alpha, (c.search_iters, c.search_samples, c.search_elites, c.search_std)
        (1.0, 1.0, (2, 20, 5, 2.0))
    """

    name: str = "omar"
    w: float = 1.0  # actor loss w·||pi - â||² - (1-w)·Q; [choice] 0.7 for random data
    cql_alpha: float = 1.0  # weight of the CQL penalty on each twin critic
    cql_samples: int = 10  # actions per source: uniform, policy at o_i, policy at o'_i
    cql_policy_noise: float = 0.2  # [choice] Gaussian noise that turns the deterministic pi into a density
    search_iters: int = 2
    search_samples: int = 20
    search_elites: int = 5
    search_mean: float = 0.0
    search_std: float = 2.0
    policy_noise: float = 0.2  # TD3 target policy smoothing
    noise_clip: float = 0.5
    policy_delay: int = 1  # OMAR steps its actor every critic step
    normalise_observations: bool = False


@register("algorithm", "omar")
class OMAR(MATD3BC):
    """OMAR: per-agent TD3 twin critics with the CQL penalty; the actor minimises
    w·||pi_i(o_i) - â_i||² - (1-w)·Q_i(o_i, pi_i(o_i)), â_i the better under Q_i of pi_i(o_i) and
    the best action of a sampled (cross-entropy) search over [-1, 1]^A.

    CQL for a deterministic actor [choice]: the policy samples are pi_i(o) plus Gaussian noise of
    std ``cql_policy_noise`` (clamped to [-1, 1]), with the noise's log-density as log p.

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> module = OMAR.from_spec(spec, hidden=[8, 8])
        >>> action, value = module.search_action(torch.zeros(5, 2, 3), module.act(torch.zeros(5, 2, 3)))
        >>> action.shape, value.shape, bool(action.abs().max() <= 1)
        (torch.Size([5, 2, 2]), torch.Size([5, 2]), True)
    """

    config_class = OMARConfig
    supports = (CONTINUOUS,)
    hooks = ("augment_batch", "critic_target")

    # ---- critic: TD3 loss + CQL penalty ----------------------------------------------------
    @torch.no_grad()
    def cql_actions(self, observation, next_observation) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3M sampled actions [3M, B, N, A] and their log-densities log p [3M, B, N]."""
        c, a = self.config, self.spec.action_dim
        m = c.cql_samples
        uniform = torch.rand(m, *observation.shape[:-1], a, device=observation.device, generator=self.rng) * 2 - 1
        log_uniform = torch.full(uniform.shape[:-1], -a * math.log(2.0), device=observation.device)
        mean = self.actor(torch.stack([observation, next_observation]))  # [2, B, N, A]
        noise = torch.randn(m, *mean.shape, device=mean.device, generator=self.rng) * c.cql_policy_noise
        policy = (mean + noise).clamp(-1.0, 1.0).flatten(0, 1)  # [2M, B, N, A]: at o, then at o'
        log_policy = -(noise**2 / (2 * c.cql_policy_noise**2) + math.log(c.cql_policy_noise)
                       + 0.5 * math.log(2 * math.pi)).sum(-1).flatten(0, 1)
        return torch.cat([uniform, policy]), torch.cat([log_uniform, log_policy])

    def cql_penalty(self, observation, q_data, actions, log_p) -> torch.Tensor:
        """alpha·(logsumexp_j [Q_k(o_i, a_j) - log p(a_j)] - Q_k(o_i, a_i^D)), averaged over the
        batch and the agents, summed over the twin critics. ``q_data`` is [K, B, N]."""
        expanded = observation.expand(actions.shape[0], *observation.shape)
        q_sampled = self.q(expanded, actions)  # [K, 3M, B, N]
        gap = torch.logsumexp(q_sampled - log_p, dim=1) - q_data
        return self.config.cql_alpha * gap.sum(0).mean()

    def critic_loss(self, batch, observation, next_observation, intermediates: dict) -> torch.Tensor:
        td = super().critic_loss(batch, observation, next_observation, intermediates)
        actions, log_p = self.cql_actions(observation, next_observation)
        penalty = self.cql_penalty(observation, intermediates["q"], actions, log_p)
        intermediates.update(td=td, cql=penalty)
        return td + penalty

    # ---- actor: pulled toward the better of pi and the searched action ----------------------
    @torch.no_grad()
    def search_action(self, observation, pi) -> tuple[torch.Tensor, torch.Tensor]:
        """â and Q_1(o, â), [B, N, A] and [B, N]: the best of pi and of every sample of a
        cross-entropy search (Gaussian from (search_mean, search_std), refit to the elites each
        iteration; samples clamped to [-1, 1]), for all agents and rows at once."""
        c = self.config
        best_action, best_q = pi, self.q(observation, pi, members=1)[0]
        mean = torch.full_like(pi, c.search_mean)
        std = torch.full_like(pi, c.search_std)
        expanded = observation.expand(c.search_samples, *observation.shape)
        for _ in range(c.search_iters):
            samples = (mean + std * torch.randn(c.search_samples, *pi.shape, device=pi.device, generator=self.rng)).clamp(-1.0, 1.0)
            q = self.q(expanded, samples, members=1)[0]  # [S, B, N]
            top_q, top = q.topk(c.search_elites, dim=0)  # sorted: top_q[0] is the best sample
            elites = samples.gather(0, top.unsqueeze(-1).expand(-1, *pi.shape))
            mean, std = elites.mean(0), elites.std(0)
            better = top_q[0] > best_q
            best_q = torch.where(better, top_q[0], best_q)
            best_action = torch.where(better.unsqueeze(-1), elites[0], best_action)
        return best_action, best_q

    def actor_loss(self, batch, observation, intermediates: dict) -> torch.Tensor:
        w = self.config.w
        pi = self.actor(observation)
        target_action, target_q = self.search_action(observation, pi.detach())
        q_pi = self.policy_q(observation, pi)
        intermediates.update(pi=pi, q_pi=q_pi, search_action=target_action, search_q=target_q)
        return (w * ((pi - target_action) ** 2).sum(-1) - (1.0 - w) * q_pi).mean()
