"""Conditional denoising diffusion (DDPM) noise networks, used to estimate behaviour scores.

``ConditionalDiffusion`` holds one noise network eps(a^k, k | c) shared by the agents (a one-hot
agent id appended to its input, so all agents go through one batched call) and the noise
schedule. It is trained with the DDPM loss and only ever asked for scores, never sampled from:
grad_a log mu(a | c) ≈ -eps(a, k | c) / sqrt(1 - ᾱ_k) at a small noise level k (METHODS.md §2).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchrl.modules import MLP

from lightning_marl.nets.linear import Linear

SCHEDULES = ("vp", "linear", "cosine")


def noise_schedule(kind: str, steps: int) -> torch.Tensor:
    """The betas [K] of a K-step schedule: ``vp`` (variance preserving, beta_min 0.1, beta_max 10,
    as in Diffusion-QL), ``linear`` (1e-4 to 2e-2) or ``cosine`` (Nichol and Dhariwal, s = 0.008).

    Example:
        >>> betas = noise_schedule("vp", 5)
        >>> betas.shape, round(float(betas[0]), 3), bool((betas[1:] > betas[:-1]).all())
        (torch.Size([5]), 0.196, True)
    """
    if steps < 1:
        raise ValueError(f"a noise schedule needs steps >= 1, got {steps}")
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    if kind == "vp":
        b_min, b_max = 0.1, 10.0
        betas = 1.0 - torch.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
    elif kind == "linear":
        betas = torch.linspace(1e-4, 2e-2, steps, dtype=torch.float64)
    elif kind == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
        alphas_bar = f / f[0]
        betas = (1 - alphas_bar[1:] / alphas_bar[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"unknown noise schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    return betas.float()


def sinusoidal_embedding(k: torch.Tensor, dim: int = 16) -> torch.Tensor:
    """Sinusoidal embedding of noise levels: ``k [...] -> [..., dim]``.

    Example:
        >>> sinusoidal_embedding(torch.tensor([1, 5]), 16).shape
        torch.Size([2, 16])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=k.device, dtype=torch.float32) / max(half - 1, 1))
    angles = k.to(torch.float32).unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConditionalDiffusion(nn.Module):
    """Per-agent conditional DDPM noise model eps_i(a_i^k, k | c_i), agents in one batched call.

    ``x: [..., N, A]`` (noisy actions), ``k: [..., N]`` noise levels in 1..K, ``condition:
    [..., N, C]`` (each agent's conditioning: the state, and for sequential scores the masked
    prefix of the joint action) -> predicted noise ``[..., N, A]``. The network is an MLP (Mish)
    over [x; sinusoidal(k); c; one-hot(i)], shared by the agents.

    Example:
        >>> model = ConditionalDiffusion(action_dim=2, condition_dim=3, n_agents=2, hidden=(16, 16))
        >>> a, c = torch.zeros(5, 2, 2), torch.zeros(5, 2, 3)
        >>> model.loss(a, c).shape, model.score(a, c).shape
        (torch.Size([]), torch.Size([5, 2, 2]))
    """

    def __init__(self, action_dim: int, condition_dim: int, n_agents: int, hidden=(256, 256, 256),
                 steps: int = 5, schedule: str = "vp", time_dim: int = 16):
        super().__init__()
        self.action_dim, self.n_agents, self.steps, self.time_dim = action_dim, n_agents, steps, time_dim
        self.net = MLP(in_features=action_dim + time_dim + condition_dim + n_agents, out_features=action_dim,
                       num_cells=list(hidden), activation_class=nn.Mish, layer_class=Linear)
        betas = noise_schedule(schedule, steps)
        self.register_buffer("alphas_bar", torch.cumprod(1.0 - betas, dim=0), persistent=False)
        self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)

    def forward(self, x: torch.Tensor, k: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        ids = self.agent_ids.to(x.dtype).expand(*x.shape[:-1], self.n_agents)
        return self.net(torch.cat([x, sinusoidal_embedding(k, self.time_dim).to(x.dtype), condition, ids], dim=-1))

    def sigma(self, level: int) -> torch.Tensor:
        """sqrt(1 - ᾱ_k), the noise scale at level k (1 = least noisy)."""
        return (1.0 - self.alphas_bar[level - 1]).sqrt()

    def loss(self, action: torch.Tensor, condition: torch.Tensor, generator: torch.Generator | None = None):
        """DDPM loss E||eps - eps(sqrt(ᾱ_k) a + sqrt(1-ᾱ_k) eps, k | c)||², k uniform in 1..K per agent."""
        k = torch.randint(1, self.steps + 1, action.shape[:-1], device=action.device, generator=generator)
        noise = torch.randn(action.shape, device=action.device, dtype=action.dtype, generator=generator)
        alpha_bar = self.alphas_bar[k - 1].unsqueeze(-1)
        noisy = alpha_bar.sqrt() * action + (1.0 - alpha_bar).sqrt() * noise
        return ((self(noisy, k, condition) - noise) ** 2).mean()

    def score(self, action: torch.Tensor, condition: torch.Tensor, level: int = 1) -> torch.Tensor:
        """The behaviour score grad_a log mu(a | c) ≈ -eps(a, k | c) / sqrt(1 - ᾱ_k): [..., N, A]."""
        k = torch.full(action.shape[:-1], level, device=action.device, dtype=torch.long)
        return -self(action, k, condition) / self.sigma(level)
