"""Decentralised actors: each agent sees only its own observation (plus its id)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_marl.nets.agents import AgentMLP

ACTION_CLAMP = 1.0 - 1e-7
MEAN_CLAMP = 9.0
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class TanhGaussianActor(nn.Module):
    """Tanh-squashed Gaussian policy shared by agents (agent id appended).

    Actions live in [-1, 1]. ``log_prob`` follows METHODS.md §1: the action is clamped to
    ±(1 − 1e-7) in float32 before atanh, the mean to [−9, 9], the log-std to [−5, 2].
    One network computes both heads: its last layer's first ``action_dim`` outputs are the mean,
    the rest the log-std (so the whole actor is one ``ReLUMLP``, one autograd node on the oneDNN
    route). State dicts with separate ``mean``/``log_std`` heads (before 2026-11) still load.

    Example:
        >>> actor = TanhGaussianActor(obs_dim=3, action_dim=2, n_agents=2, hidden=(8, 8))
        >>> actor.log_prob(torch.zeros(5, 2, 3), torch.zeros(5, 2, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(self, obs_dim: int, action_dim: int, n_agents: int, hidden=(256, 256)):
        super().__init__()
        self.action_dim = action_dim
        self.net = AgentMLP(obs_dim, 2 * action_dim, n_agents, hidden)
        self._register_load_state_dict_pre_hook(_merge_separate_heads)

    def raw(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads before clamping: mean and log-std of the pre-tanh Gaussian, each [..., N, A]."""
        out = self.net(observation)
        return out[..., :self.action_dim], out[..., self.action_dim:]

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clamped mean and log-std of the pre-tanh Gaussian, each [..., N, A]."""
        return clamped_heads(self.net(observation), self.action_dim)

    @property
    def linears(self) -> list[nn.Linear]:
        return self.net.linears

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor, mask=None) -> torch.Tensor:
        """log pi_i(a_i | o_i) for dataset actions in [-1, 1]: [..., N, A] -> [..., N] (no masks here)."""
        return tanh_gaussian_log_prob(self.net(observation), action)

    def act(self, observation: torch.Tensor, mask=None, deterministic: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions in [-1, 1]: tanh of the clamped mean, or a sample when not deterministic."""
        mean, log_std = self(observation)
        if deterministic:
            return torch.tanh(mean)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return torch.tanh(mean + log_std.exp() * noise)


def clamped_heads(heads: torch.Tensor, action_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean [..., A] clamped to [−9, 9] and the log-std [..., A] clamped to [−5, 2] from a
    ``TanhGaussianActor`` network's raw output [..., 2A] (the mean's columns first)."""
    return (heads[..., :action_dim].clamp(-MEAN_CLAMP, MEAN_CLAMP),
            heads[..., action_dim:].clamp(LOG_STD_MIN, LOG_STD_MAX))


def tanh_log_jacobian(u: torch.Tensor) -> torch.Tensor:
    """log |d tanh(u) / du| = 2 (log 2 − u − softplus(−2u)), elementwise and stable for large |u|."""
    return 2 * (math.log(2) - u - F.softplus(-2 * u))


def tanh_gaussian_log_prob(heads: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log pi(a | .) of dataset actions ``action`` [..., A] in [-1, 1] under the tanh-Gaussian whose
    raw heads ``heads`` [..., 2A] (mean, then log-std, before their clamps) a ``TanhGaussianActor``'s
    network outputs: [..., 2A], [..., A] -> [..., ] (METHODS.md §1).

    The action is clamped to ±(1 − 1e-7) before atanh, the mean to [−9, 9] and the log-std to
    [−5, 2]; everything is computed in float32 (in bfloat16 the action's clamp bound rounds to 1
    and atanh gives inf). With gradients it is one autograd node with a hand-written backward
    (~15 operations instead of ~60; the derivatives are d/dmean = (u − mean)/var and
    d/dlog_std = (u − mean)²/var − 1, zero where a clamp is active, as ``clamp``'s own are).

    Example:
        >>> heads = torch.tensor([[0.0, 0.0]])        # mean 0, log-std 0: a standard normal before tanh
        >>> tanh_gaussian_log_prob(heads, torch.tensor([[0.0]]))   # log N(0; 0, 1) + log|d atanh/da| at 0
        tensor([-0.9189])
    """
    if torch.is_grad_enabled() and heads.requires_grad:
        return _TanhGaussianLogProb.apply(heads, action)
    return _tanh_gaussian_log_prob(heads, action)[0]


def _tanh_gaussian_log_prob(heads: torch.Tensor, action: torch.Tensor):
    """The log-probability [...] and, for the backward, (u - mean)/var, (u - mean)^2/var and the
    clamped mean and log-std (compared with the raw heads there to find the active clamps)."""
    size = action.shape[-1]
    mean, log_std = clamped_heads(heads.float(), size)
    u = torch.atanh(action.float().clamp(-ACTION_CLAMP, ACTION_CLAMP))
    diff = u - mean
    scaled = diff * torch.exp(-2 * log_std)  # (u - mean) / var
    squared = scaled * diff  # (u - mean)^2 / var
    terms = squared.mul(-0.5).sub_(log_std).sub_(tanh_log_jacobian(u))
    value = terms.sum(-1) - size * 0.5 * math.log(2 * math.pi)
    return value, scaled, squared, mean, log_std


class _TanhGaussianLogProb(torch.autograd.Function):
    """``tanh_gaussian_log_prob`` as one autograd node (the action gets no gradient)."""

    @staticmethod
    def forward(ctx, heads, action):
        value, scaled, squared, mean, log_std = _tanh_gaussian_log_prob(heads, action)
        ctx.save_for_backward(heads, scaled, squared, mean, log_std)
        return value

    @staticmethod
    def backward(ctx, grad):
        heads, scaled, squared, mean, log_std = ctx.saved_tensors
        size = scaled.shape[-1]
        raw = heads.float()
        grad = grad.unsqueeze(-1)
        # Where a clamp is active its output equals its bound, not its input: zero gradient.
        grad_heads = torch.cat([(scaled * grad).mul_(mean == raw[..., :size]),
                                (squared - 1).mul_(grad).mul_(log_std == raw[..., size:])], -1)
        return grad_heads.to(heads.dtype), None


class CategoricalActor(nn.Module):
    """Categorical policy over discrete actions, unavailable actions masked to −inf.

    Example:
        >>> actor = CategoricalActor(obs_dim=3, n_actions=4, n_agents=2, hidden=(8, 8))
        >>> mask = torch.tensor([[True, False, True, True]] * 2).expand(5, 2, 4)
        >>> actor.act(torch.zeros(5, 2, 3), mask).shape
        torch.Size([5, 2])
    """

    def __init__(self, obs_dim: int, n_actions: int, n_agents: int, hidden=(256, 256)):
        super().__init__()
        self.logits_net = AgentMLP(obs_dim, n_actions, n_agents, hidden)

    def forward(self, observation: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [..., N, K], −inf where ``mask`` is False."""
        logits = self.logits_net(observation)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits

    def log_prob(self, observation, action, mask=None) -> torch.Tensor:
        """log pi_i(a_i | o_i) for action indices [..., N] -> [..., N]."""
        logits = self(observation, mask).float()
        return torch.log_softmax(logits, -1).gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def act(self, observation, mask=None, deterministic: bool = True, generator=None) -> torch.Tensor:
        """Greedy (or sampled) available action indices [..., N]."""
        logits = self(observation, mask)
        if deterministic:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float(), -1)
        flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return flat.reshape(probs.shape[:-1])


def _merge_separate_heads(state_dict, prefix, *args) -> None:
    """Load a state dict written when the actor had a trunk and two head layers."""
    if prefix + "mean.weight" not in state_dict:
        return
    trunk = prefix + "trunk.net."
    for key in [k for k in state_dict if k.startswith(trunk)]:
        state_dict[prefix + "net.net." + key[len(trunk):]] = state_dict.pop(key)
    last = 2 * sum(1 for k in state_dict if k.startswith(prefix + "net.net.") and k.endswith(".weight"))
    for name in ("weight", "bias"):
        heads = [state_dict.pop(f"{prefix}{head}.{name}") for head in ("mean", "log_std")]
        state_dict[f"{prefix}net.net.{last}.{name}"] = torch.cat(heads)


def stochastic_actor(spec, hidden=(256, 256)) -> TanhGaussianActor | CategoricalActor:
    """The stochastic actor for a task: tanh-Gaussian (continuous) or masked categorical (discrete).

    Both take ``log_prob(observation, action, mask=None)`` and ``act(observation, mask=None)``.

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=1, state_dim=2, discrete=True, n_actions=3)
        >>> type(stochastic_actor(spec, hidden=(8, 8))).__name__
        'CategoricalActor'
    """
    if spec.discrete:
        return CategoricalActor(spec.obs_dim, spec.n_actions, spec.n_agents, hidden)
    return TanhGaussianActor(spec.obs_dim, spec.action_dim, spec.n_agents, hidden)
