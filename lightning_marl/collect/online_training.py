"""Behaviour policies trained online: multi-agent PPO (MAPPO / IPPO), checkpointed during training.

Agents share one actor (agent id appended, ``nets.stochastic_actor``): a tanh-Gaussian for
continuous actions, a masked categorical for discrete ones. MAPPO's critic sees the global state,
IPPO's each agent's own observation; both learn the team reward with GAE, a running observation
normaliser and a normalised value target. Every ``checkpoint_every`` iterations (and at iteration
0) the greedy policy is evaluated and saved; the list of checkpoints with their returns is what
the qualities (medium, expert, medium-replay) are cut from. Training resumes from its last
checkpoint.

Example:
    >>> from lightning_marl.envs import env_spec, make_env
    >>> spec = task_spec(env_spec(make_env("matrix", "climbing", num_envs=2)))
    >>> policy = BehaviourPolicy(spec, hidden=(8, 8))
    >>> policy.act(torch.zeros(5, 2, 1), torch.ones(5, 2, 3, dtype=torch.bool)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_marl.collect.resumable import ResumableTraining
from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec
from lightning_marl.nets import AgentMLP, StateValue, stochastic_actor


def task_spec(spec: dict) -> TaskSpec:
    """The TaskSpec of an ``env_spec(env)`` dict."""
    return TaskSpec(
        n_agents=spec["n_agents"], obs_dim=spec["obs_dim"], state_dim=spec["state_dim"],
        discrete=spec["discrete"], action_dim=spec.get("action_dim", 0), n_actions=spec.get("n_actions", 0),
        action_low=spec.get("action_low", []), action_high=spec.get("action_high", []),
        agent_names=spec["agent_names"],
    )


class RunningNorm(nn.Module):
    """Running mean and variance of a feature vector; ``forward`` standardises (clipped to ±10).

    Example:
        >>> norm = RunningNorm(1)
        >>> norm.update(torch.tensor([[1.0], [3.0]]))
        >>> round(norm.mean.item(), 3), round(norm(torch.tensor([3.0])).item(), 2)
        (2.0, 1.0)
    """

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.tensor(1e-4))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.mean.shape[0]).double()
        n, mean, var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta.pow(2) * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / (self.var + 1e-8).sqrt()).clamp(-10.0, 10.0)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.var + 1e-8).sqrt() + self.mean


class BehaviourPolicy(nn.Module):
    """A shared stochastic actor and a critic (on the state: MAPPO, on each observation: IPPO).

    ``act`` returns unit actions in [-1, 1] (continuous) or indices (discrete);
    ``env_act(spec)`` wraps it into the ``act(observation, mask)`` that rollouts take, in the
    env's own bounds.

    Example:
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> policy = BehaviourPolicy(spec, hidden=(8, 8))
        >>> policy.value(torch.zeros(5, 2, 3), torch.zeros(5, 6)).shape   # [B, 1] for MAPPO
        torch.Size([5, 1])
    """

    def __init__(self, spec: TaskSpec, hidden=(64, 64), centralised: bool = True):
        super().__init__()
        self.spec, self.centralised = spec, centralised
        self.actor = stochastic_actor(spec, tuple(hidden))
        self.obs_norm = RunningNorm(spec.obs_dim)
        if centralised:
            self.critic = StateValue(spec.state_dim, tuple(hidden))
            self.state_norm = RunningNorm(spec.state_dim)
        else:
            self.critic = AgentMLP(spec.obs_dim, 1, spec.n_agents, tuple(hidden))
        self.value_norm = RunningNorm(1)

    def value(self, observation: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Normalised value: [B, 1] (MAPPO) or [B, N] (IPPO)."""
        if self.centralised:
            return self.critic(self.state_norm(state))
        return self.critic(self.obs_norm(observation)).squeeze(-1)

    def log_prob(self, observation, action, mask=None) -> torch.Tensor:
        return self.actor.log_prob(self.obs_norm(observation), action, mask)

    def entropy(self, observation, mask=None) -> torch.Tensor:
        """Per-agent entropy [B, N] (continuous: of the pre-tanh Gaussian)."""
        observation = self.obs_norm(observation)
        if self.spec.discrete:
            logits = self.actor(observation, mask)
            logp = torch.log_softmax(logits, -1)
            return -(logp.exp() * logp.masked_fill(~torch.isfinite(logp), 0.0)).sum(-1)
        _, log_std = self.actor(observation)
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    @torch.no_grad()
    def act(self, observation, mask=None, deterministic: bool = True, generator=None) -> torch.Tensor:
        return self.actor.act(self.obs_norm(observation), mask, deterministic=deterministic, generator=generator)

    def env_act(self, deterministic: bool = True, generator=None):
        """``act(observation, mask)`` in the env's bounds, for rollouts and collection."""
        spec = self.spec
        if not spec.discrete:
            low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)

        def act(observation, mask=None):
            action = self.act(observation, mask, deterministic, generator)
            if spec.discrete:
                return action
            return low + (action + 1) * 0.5 * (high - low)

        return act


def load_behaviour(file, spec: TaskSpec) -> BehaviourPolicy:
    """A BehaviourPolicy from a checkpoint written by ``train_behaviour``."""
    saved = torch.load(file, weights_only=True)
    policy = BehaviourPolicy(spec, saved["hidden"], saved["centralised"])
    policy.load_state_dict(saved["policy"])
    return policy.eval()


def _rollout(env, td, policy: BehaviourPolicy, steps: int, generator):
    """``steps`` steps of the sampling policy in the batched env; returns ([T, E] tensors, td)."""
    spec = policy.spec
    if not spec.discrete:
        low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
    rows = []
    with torch.no_grad():
        for _ in range(steps):
            obs, state, mask = td[schema.OBS], td[schema.STATE], td.get(schema.ACTION_MASK, None)
            action = policy.act(obs, mask, deterministic=False, generator=generator)
            logp = policy.log_prob(obs, action, mask)
            td[schema.ACTION] = action if spec.discrete else low + (action + 1) * 0.5 * (high - low)
            td, next_td = env.step_and_maybe_reset(td)
            row = {"obs": obs, "state": state, "action": action, "logp": logp,
                   "reward": td[schema.REWARD].float(), "terminated": td[schema.TERMINATED].float(),
                   "done": td[schema.DONE].float(), "next_obs": td[schema.NEXT_OBS], "next_state": td[schema.NEXT_STATE]}
            if mask is not None:
                row["mask"] = mask
            rows.append(row)
            td = next_td
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    return batch, td


def _advantages(policy: BehaviourPolicy, batch: dict, gamma: float, lam: float):
    """GAE over [T, E]: bootstraps through time limits, stops at terminations."""
    with torch.no_grad():
        values = policy.value_norm.denormalise(policy.value(batch["obs"], batch["state"]).unsqueeze(-1)).squeeze(-1)
        next_values = policy.value_norm.denormalise(
            policy.value(batch["next_obs"], batch["next_state"]).unsqueeze(-1)).squeeze(-1)
    reward, terminated, done = batch["reward"], batch["terminated"], batch["done"]  # [T, E, 1]
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(values.shape[0])):
        delta = reward[t] + gamma * next_values[t] * (1 - terminated[t]) - values[t]
        last = delta + gamma * lam * (1 - done[t]) * last
        advantages[t] = last
    return advantages, advantages + values


def _update(policy, optimiser, batch, advantages, returns, cfg, generator) -> dict:
    flat = {key: value.flatten(0, 1) for key, value in batch.items()}
    advantages, returns = advantages.flatten(0, 1), returns.flatten(0, 1)  # [B, V]
    policy.value_norm.update(returns.unsqueeze(-1))
    targets = policy.value_norm(returns.unsqueeze(-1)).squeeze(-1)
    n = advantages.shape[0]
    stats = {}
    for _ in range(cfg.epochs):
        for index in torch.randperm(n, generator=generator).chunk(cfg.minibatches):
            mask = flat["mask"][index] if "mask" in flat else None
            logp = policy.log_prob(flat["obs"][index], flat["action"][index], mask)  # [B, N]
            ratio = (logp - flat["logp"][index]).exp()
            adv = advantages[index]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # [B, V]: V = 1 broadcasts over agents
            policy_loss = -torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv).mean()
            value_loss = (policy.value(flat["obs"][index], flat["state"][index]) - targets[index]).pow(2).mean()
            entropy = policy.entropy(flat["obs"][index], mask).mean()
            loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimiser.step()
            stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}
    policy.obs_norm.update(flat["obs"])
    if policy.centralised:
        policy.state_norm.update(flat["state"])
    return stats


def train_behaviour(make_env_fn, spec: TaskSpec, cfg, out_dir, seed: int = 0, eval_seed: int = 1,
                    progress: bool = True) -> list[dict]:
    """Train PPO behaviour policies; return the checkpoint index (resumes from ``out_dir``).

    ``make_env_fn(num_envs, seed)`` builds a batched env. ``cfg`` is a ``TrainConfig``. Each
    index entry: ``{"iteration", "env_steps", "eval_return", "file"}`` (file relative to
    ``out_dir``). ``out_dir/state.pt`` holds what resuming needs (policy, optimiser, RNG, index).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights depend on the seed only
        policy = BehaviourPolicy(spec, list(cfg.hidden), centralised=cfg.algorithm == "mappo")
    optimiser = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    training = ResumableTraining(out_dir, cfg, policy, generator, {"policy": policy, "optimiser": optimiser})

    def one_iteration(iteration, env, td):
        batch, td = _rollout(env, td, policy, cfg.rollout_steps, generator)
        advantages, returns = _advantages(policy, batch, cfg.gamma, cfg.gae_lambda)
        _update(policy, optimiser, batch, advantages, returns, cfg, generator)
        return td

    return training.run(make_env_fn, seed, eval_seed, one_iteration, "training behaviour (PPO)", progress)
