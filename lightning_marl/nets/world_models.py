"""World models of model-based offline MARL: LOGO's local-to-global model, a Gaussian ensemble, a global MLP.

All models take raw tensors (this module imports nothing of the project) and hold their own
input/target standardisers (buffers, saved in their state dicts, set once by ``fit_statistics``):

    observation [B, N, O], action features [B, N, F] (continuous actions, or one-hot indices),
    state [B, S] (the global state, per-agent states appended flat when a dataset has them),
    reward [B, 1], terminated [B, 1] (bool), next action mask [B, N, K] (discrete tasks).

``loss(**targets)`` returns a dict of scalar losses; ``forward`` predicts raw next observations,
next state, reward and termination logits; everything agent-wise is a tensor dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_marl.nets.agents import AgentMLP
from lightning_marl.nets.ensemble import EnsembleLinear
from lightning_marl.nets.linear import ReLUMLP


class Standardiser(nn.Module):
    """Mean/std buffers over the last dimension: ``x -> (x - mean) / std`` and back.

    Features with (almost) no spread keep std 1, so constant inputs stay finite.

    Example:
        >>> norm = Standardiser(2)
        >>> norm.fit(torch.tensor([[0.0, 5.0], [2.0, 5.0]]))
        >>> norm(torch.tensor([[2.0, 5.0]])), norm.inverse(torch.zeros(1, 2))
        (tensor([[1., 0.]]), tensor([[1., 5.]]))
    """

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).double()
        std = flat.std(0, unbiased=False) if flat.shape[0] > 1 else torch.zeros_like(flat[0])
        self.mean.copy_(flat.mean(0).float())
        self.std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def _mlp(in_features: int, out_features: int, hidden, activate_last_layer: bool = False) -> ReLUMLP:
    return ReLUMLP(in_features, out_features, hidden, activate_last_layer=activate_last_layer)


class DynamicsStatistics(nn.Module):
    """The standardisers every model shares: inputs, one-step changes of observation and state, reward."""

    def __init__(self, obs_dim: int, state_dim: int):
        super().__init__()
        self.obs = Standardiser(obs_dim)
        self.state = Standardiser(state_dim)
        self.obs_change = Standardiser(obs_dim)
        self.state_change = Standardiser(state_dim)
        self.reward = Standardiser(1)

    def fit(self, observation, state, next_observation, next_state, reward) -> None:
        self.obs.fit(observation)
        self.state.fit(state)
        self.obs_change.fit(next_observation - observation)
        self.state_change.fit(next_state - state)
        self.reward.fit(reward)


class LocalToGlobalModel(nn.Module):
    """LOGO's world model: local predictions, a deductive global model and a direct encoder.

    - context c = MLP(s, a) (the global context every agent's predictor sees, [choice]: the joint action included);
    - local predictor (shared, agent id appended): encoder z_i = E(o_i, a_i, c), decoders
      z_i -> change of o_i (prediction loss), z_i -> (o_i, a_i) (reconstruction loss) and, for
      discrete tasks, z_i -> the next action mask of agent i (a Bernoulli head);
    - deductive model: concatenated predictions (ô'_1..ô'_N) and c -> ŝ', r̂, termination logit;
      a linear map of the concatenated predictions (fitted in closed form by ``fit_statistics``:
      exact when the state is the concatenated observations) plus an MLP correction;
    - direct encoder (s, a) -> ŝ' (and r̂), used only for the uncertainty
      u = ||(ŝ'_direct, r̂_direct) - (ŝ'_deduced, r̂_deduced)|| in standardised units.

    Example:
        >>> model = LocalToGlobalModel(n_agents=2, obs_dim=3, action_features=2, state_dim=6,
        ...                            hidden=(16, 16), latent=8, context=8)
        >>> out = model(torch.zeros(5, 2, 3), torch.zeros(5, 2, 2), torch.zeros(5, 6))
        >>> out["next_observation"].shape, out["next_state"].shape, out["uncertainty"].shape
        (torch.Size([5, 2, 3]), torch.Size([5, 6]), torch.Size([5]))
    """

    def __init__(self, n_agents: int, obs_dim: int, action_features: int, state_dim: int, hidden=(256, 256),
                 latent: int = 64, context: int = 64, n_actions: int = 0, reconstruction_weight: float = 0.5,
                 reward_in_uncertainty: bool = True):
        super().__init__()
        self.n_agents, self.obs_dim, self.state_dim, self.n_actions = n_agents, obs_dim, state_dim, n_actions
        self.reconstruction_weight = reconstruction_weight
        self.reward_in_uncertainty = reward_in_uncertainty
        self.stats = DynamicsStatistics(obs_dim, state_dim)
        joint = state_dim + n_agents * action_features
        self.context = _mlp(joint, context, hidden[:1], activate_last_layer=True)
        self.encoder = AgentMLP(obs_dim + action_features + context, latent, n_agents, hidden, activate_last_layer=True)
        self.predictor = nn.Linear(latent, obs_dim)
        self.reconstructor = _mlp(latent, obs_dim + action_features, hidden[:1])
        self.mask_head = nn.Linear(latent, n_actions) if n_actions else None
        self.deduce_linear = nn.Linear(n_agents * obs_dim, state_dim)
        self.deductive = _mlp(n_agents * obs_dim + context, state_dim + 2, hidden)
        self.direct = _mlp(joint, state_dim + 1, hidden)

    @torch.no_grad()
    def fit_statistics(self, observation, action, state, next_observation, next_state, reward) -> None:
        """Standardisers from training data, and the deductive linear map by least squares."""
        self.stats.fit(observation, state, next_observation, next_state, reward)
        x = self.stats.obs(next_observation).flatten(-2).double()
        y = self.stats.state(next_state).double()
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], -1)
        ridge = 1e-4 * torch.eye(x1.shape[-1], dtype=x1.dtype)
        solution = torch.linalg.solve(x1.T @ x1 + ridge * x1.shape[0], x1.T @ y)  # [N*O + 1, S]
        self.deduce_linear.weight.copy_(solution[:-1].T.float())
        self.deduce_linear.bias.copy_(solution[-1].float())

    def forward(self, observation, action, state) -> dict:
        """Raw next observation [B, N, O], next state [B, S], reward [B, 1], termination and mask
        logits, the standardised deduced/direct predictions and the uncertainty u [B]."""
        stats = self.stats
        obs_n, state_n = stats.obs(observation), stats.state(state)
        joint = torch.cat([state_n, action.flatten(-2)], -1)
        context = self.context(joint)
        z = self.encoder(torch.cat([obs_n, action, context.unsqueeze(-2).expand(*obs_n.shape[:-1], -1)], -1))
        change_n = self.predictor(z)
        next_observation = observation + stats.obs_change.inverse(change_n)
        next_obs_n = stats.obs(next_observation).flatten(-2)
        deduced = self.deductive(torch.cat([next_obs_n, context], -1))
        deduced_state_n = self.deduce_linear(next_obs_n) + deduced[..., :self.state_dim]
        deduced_reward_n = deduced[..., self.state_dim:self.state_dim + 1]
        direct = self.direct(joint)
        direct_state = state + stats.state_change.inverse(direct[..., :self.state_dim])
        direct_state_n = stats.state(direct_state)
        gap = (direct_state_n - deduced_state_n).pow(2).sum(-1)
        if self.reward_in_uncertainty:
            gap = gap + (direct[..., self.state_dim:] - deduced_reward_n).pow(2).sum(-1)
        return {
            "change_n": change_n,
            "reconstruction": self.reconstructor(z),
            "mask_logits": self.mask_head(z) if self.mask_head is not None else None,
            "next_observation": next_observation,
            "next_state_n": deduced_state_n,
            "next_state": stats.state.inverse(deduced_state_n),
            "reward_n": deduced_reward_n,
            "reward": stats.reward.inverse(deduced_reward_n),
            "termination_logit": deduced[..., -1:],
            "direct_change_n": direct[..., :self.state_dim],
            "direct_reward_n": direct[..., self.state_dim:],
            "uncertainty": gap.sqrt(),
        }

    def loss(self, observation, action, state, next_observation, next_state, reward, terminated,
             next_mask=None) -> dict:
        """Prediction, reconstruction, deduction (state, reward, termination), direct and mask losses."""
        stats = self.stats
        out = self(observation, action, state)
        losses = {
            "prediction": F.mse_loss(out["change_n"], stats.obs_change(next_observation - observation)),
            "reconstruction": self.reconstruction_weight * F.mse_loss(
                out["reconstruction"], torch.cat([stats.obs(observation), action], -1)),
            "deduction": F.mse_loss(out["next_state_n"], stats.state(next_state))
            + F.mse_loss(out["reward_n"], stats.reward(reward))
            + F.binary_cross_entropy_with_logits(out["termination_logit"], terminated.float()),
            "direct": F.mse_loss(out["direct_change_n"], stats.state_change(next_state - state))
            + F.mse_loss(out["direct_reward_n"], stats.reward(reward)),
        }
        if self.mask_head is not None and next_mask is not None:
            losses["mask"] = F.binary_cross_entropy_with_logits(out["mask_logits"], next_mask.float())
        return losses


class GaussianEnsemble(nn.Module):
    """K Gaussian global dynamics models as one network with stacked parameters (MOPO's ensemble).

    Input (s, o_1..o_N, a) standardised; member k predicts the mean and log-std of the standardised
    change of (s, o_1..o_N) and the standardised reward, plus a termination logit and (discrete
    tasks) next-action-mask logits. Log-stds are softly bounded by learned limits (as MBPO does).
    ``forward`` returns every member's prediction, [K, B, ...]; ``sigma_norm`` the norm of each
    member's next-state std in raw units.

    Example:
        >>> ens = GaussianEnsemble(members=5, n_agents=2, obs_dim=3, action_features=2, state_dim=6, hidden=(16, 16))
        >>> out = ens(torch.zeros(4, 2, 3), torch.zeros(4, 2, 2), torch.zeros(4, 6))
        >>> out["mean"].shape, ens.sigma_norm(out).shape
        (torch.Size([5, 4, 13]), torch.Size([5, 4]))
    """

    def __init__(self, members: int, n_agents: int, obs_dim: int, action_features: int, state_dim: int,
                 hidden=(200, 200), n_actions: int = 0):
        super().__init__()
        self.members, self.n_agents, self.obs_dim, self.state_dim, self.n_actions = (
            members, n_agents, obs_dim, state_dim, n_actions)
        self.stats = DynamicsStatistics(obs_dim, state_dim)
        self.out_dim = state_dim + n_agents * obs_dim + 1
        sizes = [state_dim + n_agents * (obs_dim + action_features), *hidden]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = EnsembleLinear(members, sizes[-1], 2 * self.out_dim + 1 + n_agents * n_actions)
        self.max_log_std = nn.Parameter(torch.full((self.out_dim,), 0.5))
        self.min_log_std = nn.Parameter(torch.full((self.out_dim,), -10.0))

    def fit_statistics(self, observation, action, state, next_observation, next_state, reward) -> None:
        self.stats.fit(observation, state, next_observation, next_state, reward)

    def target(self, observation, state, next_observation, next_state, reward) -> torch.Tensor:
        """The standardised (state change, observation changes, reward) vector [B, D]."""
        s = self.stats
        return torch.cat([s.state_change(next_state - state), s.obs_change(next_observation - observation).flatten(-2),
                          s.reward(reward)], -1)

    def forward(self, observation, action, state) -> dict:
        s = self.stats
        x = torch.cat([s.state(state), s.obs(observation).flatten(-2), action.flatten(-2)], -1)
        h = x.unsqueeze(0).expand(self.members, *x.shape) if x.dim() == 2 else x
        for layer in self.layers:
            h = F.silu(layer(h))
        out = self.head(h)
        d = self.out_dim
        log_std = out[..., d:2 * d]
        log_std = self.max_log_std - F.softplus(self.max_log_std - log_std)
        log_std = self.min_log_std + F.softplus(log_std - self.min_log_std)
        mask_logits = out[..., 2 * d + 1:]
        return {"mean": out[..., :d], "log_std": log_std, "termination_logit": out[..., 2 * d:2 * d + 1],
                "mask_logits": mask_logits.unflatten(-1, (self.n_agents, self.n_actions)) if self.n_actions else None}

    def sigma_norm(self, out: dict) -> torch.Tensor:
        """||sigma_k(s, a)||_2 of the next-state part in raw units, [K, B]."""
        std = out["log_std"][..., :self.state_dim].exp() * self.stats.state_change.std
        return std.norm(dim=-1)

    def decode(self, sample: torch.Tensor, observation, state) -> tuple:
        """Raw (next observation [B, N, O], next state [B, S], reward [B, 1]) from a standardised sample [B, D]."""
        s, sd = self.stats, self.state_dim
        next_state = state + s.state_change.inverse(sample[..., :sd])
        change = sample[..., sd:-1].unflatten(-1, (self.n_agents, self.obs_dim))
        next_observation = observation + s.obs_change.inverse(change)
        return next_observation, next_state, s.reward.inverse(sample[..., -1:])

    def loss(self, observation, action, state, next_observation, next_state, reward, terminated,
             next_mask=None) -> dict:
        """Gaussian NLL per member (inputs [K, B, ...]: each member its own minibatch), BCE heads."""
        out = self(observation, action, state)
        target = self.target(observation, state, next_observation, next_state, reward)
        inv_var = torch.exp(-2 * out["log_std"])
        nll = ((out["mean"] - target) ** 2 * inv_var + 2 * out["log_std"]).mean()
        losses = {
            "nll": nll + 0.01 * (self.max_log_std.sum() - self.min_log_std.sum()) / self.out_dim,
            "termination": F.binary_cross_entropy_with_logits(out["termination_logit"], terminated.float()),
        }
        if out["mask_logits"] is not None and next_mask is not None:
            losses["mask"] = F.binary_cross_entropy_with_logits(out["mask_logits"], next_mask.float())
        return losses


class GlobalMLP(nn.Module):
    """A single deterministic global model (s, o, a) -> change of (s, o), reward: a baseline for comparisons.

    Example:
        >>> net = GlobalMLP(n_agents=2, obs_dim=3, action_features=2, state_dim=6, hidden=(16, 16))
        >>> net(torch.zeros(4, 2, 3), torch.zeros(4, 2, 2), torch.zeros(4, 6))["next_state"].shape
        torch.Size([4, 6])
    """

    def __init__(self, n_agents: int, obs_dim: int, action_features: int, state_dim: int, hidden=(256, 256)):
        super().__init__()
        self.n_agents, self.obs_dim, self.state_dim = n_agents, obs_dim, state_dim
        self.stats = DynamicsStatistics(obs_dim, state_dim)
        self.net = _mlp(state_dim + n_agents * (obs_dim + action_features), state_dim + n_agents * obs_dim + 1, hidden)

    def fit_statistics(self, observation, action, state, next_observation, next_state, reward) -> None:
        self.stats.fit(observation, state, next_observation, next_state, reward)

    def forward(self, observation, action, state) -> dict:
        s, sd = self.stats, self.state_dim
        out = self.net(torch.cat([s.state(state), s.obs(observation).flatten(-2), action.flatten(-2)], -1))
        next_state = state + s.state_change.inverse(out[..., :sd])
        next_observation = observation + s.obs_change.inverse(out[..., sd:-1].unflatten(-1, (self.n_agents, self.obs_dim)))
        return {"out": out, "next_state": next_state, "next_observation": next_observation,
                "reward": s.reward.inverse(out[..., -1:])}

    def loss(self, observation, action, state, next_observation, next_state, reward, terminated=None,
             next_mask=None) -> dict:
        s = self.stats
        target = torch.cat([s.state_change(next_state - state), s.obs_change(next_observation - observation).flatten(-2),
                            s.reward(reward)], -1)
        return {"mse": F.mse_loss(self(observation, action, state)["out"], target)}


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters.

    Example:
        >>> parameter_count(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
