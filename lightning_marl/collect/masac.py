"""Behaviour policies for continuous actions trained online with MASAC, checkpointed during training.

Decentralised tanh-Gaussian actors (shared weights, agent id appended) and centralised twin
critics Q(s, a_1..a_N) with target copies; the temperature is tuned toward an entropy of
-action_dim per agent. Each iteration steps ``num_envs`` envs ``rollout_steps`` times (uniform
random actions for the first ``warmup_steps``), then takes ``updates`` gradient steps on batches
of ``batch_size`` from a replay buffer of the last ``buffer_size`` transitions. Checkpoints have
the format of ``online_training`` (a BehaviourPolicy whose critic is unused), so the qualities
are cut from them the same way. Resuming restarts from the last checkpoint with an empty buffer.

Example:
    >>> from lightning_marl.collect.config import TrainConfig
    >>> from lightning_marl.collect.online_training import task_spec
    >>> from lightning_marl.envs import env_spec, make_env
    >>> def make(n, seed): return make_env("matrix", "agree", num_envs=n, continuous=True, n_agents=2)
    >>> cfg = TrainConfig(algorithm="masac", env_steps=64, num_envs=8, rollout_steps=2, warmup_steps=16,
    ...                   updates=2, batch_size=8, checkpoint_every=2, eval_episodes=4, hidden=[8])
    >>> import tempfile
    >>> [e["iteration"] for e in train_masac(make, task_spec(env_spec(make(1, 0))), cfg, tempfile.mkdtemp(),
    ...                                      progress=False)]
    [0, 2, 4]
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from lightning_marl.collect.online_training import BehaviourPolicy
from lightning_marl.collect.resumable import ResumableTraining
from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import ConfigError
from lightning_marl.nets import CentralQ, polyak_update, tanh_gaussian_rsample

INITIAL_ALPHA = 0.1


class Replay:
    """A ring buffer of flat transitions (dict of tensors), sampled uniformly with a generator."""

    def __init__(self, capacity: int):
        self.capacity, self.size, self.cursor, self.data = capacity, 0, 0, {}

    def add(self, rows: dict) -> None:
        n = rows["reward"].shape[0]
        if not self.data:
            self.data = {k: torch.zeros(self.capacity, *v.shape[1:], dtype=v.dtype) for k, v in rows.items()}
        index = (self.cursor + torch.arange(n)) % self.capacity
        for key, value in rows.items():
            self.data[key][index] = value
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator) -> dict:
        index = torch.randint(self.size, (batch_size,), generator=generator)
        return {key: value[index] for key, value in self.data.items()}


def _losses(policy, critic, target, log_alpha, batch, gamma, generator, target_entropy):
    alpha = log_alpha.exp().detach()
    with torch.no_grad():
        next_action, next_logp = tanh_gaussian_rsample(policy.actor, batch["next_obs"], generator=generator)
        next_q = target(batch["next_state"], next_action).min(0).values  # [B, 1]
        backup = batch["reward"] + gamma * (1 - batch["terminated"]) * (next_q - alpha * next_logp.sum(-1, keepdim=True))
    critic_loss = F.mse_loss(critic(batch["state"], batch["action"]), backup.expand(2, *backup.shape))
    action, logp = tanh_gaussian_rsample(policy.actor, batch["obs"], generator=generator)  # [B, N, A], [B, N]
    q = critic(batch["state"], action, frozen=True).min(0).values  # the actor's loss leaves the critic alone
    actor_loss = (alpha * logp.sum(-1, keepdim=True) - q).mean()
    alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
    return critic_loss + actor_loss + alpha_loss


def train_masac(make_env_fn, spec: TaskSpec, cfg, out_dir, seed: int = 0, eval_seed: int = 1,
                progress: bool = True) -> list[dict]:
    """Train MASAC behaviour policies; return the checkpoint index (as ``train_behaviour``)."""
    if spec.discrete:
        raise ConfigError("train.algorithm=masac needs continuous actions; use mappo or ippo for discrete tasks")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = BehaviourPolicy(spec, list(cfg.hidden), centralised=True)
        critic = CentralQ(spec.state_dim, spec.n_agents, tuple(cfg.hidden), action_dim=spec.action_dim)
    target = copy.deepcopy(critic).requires_grad_(False)
    log_alpha = torch.tensor(math.log(INITIAL_ALPHA), requires_grad=True)
    optimiser = torch.optim.Adam([*policy.actor.parameters(), *critic.parameters(), log_alpha], lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    training = ResumableTraining(out_dir, cfg, policy, generator, {
        "policy": policy, "critic": critic, "target": target, "optimiser": optimiser, "log_alpha": log_alpha})
    per_iteration = training.per_iteration
    low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
    replay = Replay(cfg.buffer_size)
    target_entropy = -float(spec.action_dim)

    def one_iteration(iteration, env, td):
        for _ in range(cfg.rollout_steps):
            obs = td[schema.OBS]
            with torch.no_grad():
                if iteration * per_iteration < cfg.warmup_steps:
                    action = torch.rand(obs.shape[:-1] + (spec.action_dim,), generator=generator) * 2 - 1
                else:
                    action = policy.actor.act(obs, deterministic=False, generator=generator)
            td[schema.ACTION] = low + (action + 1) * 0.5 * (high - low)
            state = td[schema.STATE]
            td, next_td = env.step_and_maybe_reset(td)
            replay.add({"obs": obs, "state": state, "action": action, "reward": td[schema.REWARD].float(),
                        "next_obs": td[schema.NEXT_OBS], "next_state": td[schema.NEXT_STATE],
                        "terminated": td[schema.TERMINATED].float()})
            td = next_td
        if (iteration + 1) * per_iteration >= min(cfg.warmup_steps, cfg.env_steps) and replay.size >= cfg.batch_size:
            for _ in range(cfg.updates):
                loss = _losses(policy, critic, target, log_alpha, replay.sample(cfg.batch_size, generator),
                               cfg.gamma, generator, target_entropy)
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*policy.actor.parameters(), *critic.parameters()], cfg.max_grad_norm)
                optimiser.step()
                polyak_update(list(target.parameters()), list(critic.parameters()), cfg.tau)
        return td

    return training.run(make_env_fn, seed, eval_seed, one_iteration, "training behaviour (MASAC)", progress)
