"""Reparameterised samples of a tanh-Gaussian actor with their log-densities (SAC-style methods)."""

from __future__ import annotations

import math

import torch

from lightning_marl.nets.actors import TanhGaussianActor, tanh_log_jacobian


def tanh_gaussian_rsample(actor: TanhGaussianActor, observation: torch.Tensor, n_samples: int | None = None,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """a = tanh(mean + std·eps) and log pi(a | o), differentiable in the actor's parameters.

    ``observation [..., N, O]`` gives ``action [..., N, A]`` and ``log_prob [..., N]``; with
    ``n_samples = S`` a sample dimension goes before the agents: ``[..., S, N, A]`` and
    ``[..., S, N]`` (the agent dimension stays second to last, as agent networks expect). The
    log-density is computed from the pre-tanh sample u itself (no atanh round trip), with the
    actor's clamps on mean and log-std: log N(u; mean, std) - sum 2 (log 2 - u - softplus(-2u)).

    Example:
        >>> actor = TanhGaussianActor(obs_dim=3, action_dim=2, n_agents=2, hidden=(8, 8))
        >>> action, log_prob = tanh_gaussian_rsample(actor, torch.zeros(5, 2, 3), n_samples=4)
        >>> action.shape, log_prob.shape
        (torch.Size([5, 4, 2, 2]), torch.Size([5, 4, 2]))
        >>> torch.allclose(log_prob, actor.log_prob(torch.zeros(5, 1, 2, 3), action), atol=1e-4)
        True
    """
    mean, log_std = actor(observation)
    if n_samples is not None:
        shape = (*mean.shape[:-2], n_samples, *mean.shape[-2:])
        mean, log_std = mean.unsqueeze(-3).expand(shape), log_std.unsqueeze(-3).expand(shape)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    u = mean + log_std.exp() * noise
    gaussian = -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)
    return torch.tanh(u), (gaussian - tanh_log_jacobian(u)).sum(-1)
