"""Stepping batched environments with the current policy (plus the explore hooks) for online training."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from lightning_marl.data import schema

STEP_KEYS = (
    schema.OBS, schema.STATE, schema.AGENT_STATE, schema.ACTION_MASK, schema.ACTION,
    schema.NEXT_OBS, schema.NEXT_STATE, schema.NEXT_AGENT_STATE, schema.NEXT_ACTION_MASK,
    schema.AGENT_REWARD, schema.REWARD, schema.TERMINATED, schema.TRUNCATED, schema.DONE, schema.WON,
)


class Collector:
    """Keeps a batched env (from ``make_env``) running across calls and returns transitions of
    the batch contract: ``collect(module, frames)`` steps every env ``frames / num_envs`` times with
    ``module.act`` followed by ``module.explore`` (the plugins' explore hooks), under no_grad.

    Continuous actions are stored in [-1, 1] (the method's units) and sent to the env rescaled to
    its bounds. Episodes carry on between calls; finished envs reset on their own. Returns rows
    ordered [round, env] (TensorDict [frames]) and keeps the returns of finished episodes in
    ``finished_returns``.

    Example:
        >>> from types import SimpleNamespace
        >>> from lightning_marl.envs import env_spec, make_env
        >>> env = make_env("matrix", "climbing", num_envs=4)
        >>> policy = SimpleNamespace(act=lambda obs, mask: torch.zeros(obs.shape[:2], dtype=torch.int64),
        ...                          explore=lambda td: td, device=torch.device("cpu"), env_steps=0)
        >>> rows = Collector(env, env_spec(env), seed=0).collect(policy, 8)
        >>> rows["next", "reward"].squeeze(-1).tolist() == [11.0] * 8
        True
    """

    def __init__(self, env, spec: dict, seed: int = 0):
        self.env = env
        self.spec = spec
        self.num_envs = env.batch_size[0]
        env.set_seed(seed)
        self._td = env.reset()
        self._episode = torch.arange(self.num_envs)
        self._next_episode = self.num_envs
        self._running = torch.zeros(self.num_envs, dtype=torch.float64)
        self.finished_returns: list[float] = []
        if not spec["discrete"]:
            self._low = torch.tensor(spec["action_low"], dtype=torch.float32)
            self._high = torch.tensor(spec["action_high"], dtype=torch.float32)

    @torch.no_grad()
    def collect(self, module, frames: int) -> TensorDict:
        if frames % self.num_envs:
            raise ValueError(f"frames ({frames}) must be a multiple of the number of envs ({self.num_envs})")
        rows = []
        device = module.device
        for _ in range(frames // self.num_envs):
            td = self._td
            observation = td.get(schema.OBS)
            mask = td.get(schema.ACTION_MASK, None)
            proposal = TensorDict({schema.OBS: observation}, [self.num_envs])
            if mask is not None:
                proposal.set(schema.ACTION_MASK, mask)
            action = module.act(observation.to(device), None if mask is None else mask.to(device))
            proposal.set(schema.ACTION, action.cpu())
            action = module.explore(proposal).get(schema.ACTION).cpu()
            td.set(schema.ACTION, action if self.spec["discrete"] else self._to_env(action))
            td, self._td = self.env.step_and_maybe_reset(td)
            step = TensorDict({}, [self.num_envs])
            present = td.keys(include_nested=True, leaves_only=True)
            for key in STEP_KEYS:
                if key in present:
                    step.set(key, td.get(key).cpu().clone())
            step.set(schema.ACTION, action.clone())
            step.set(schema.EPISODE, self._episode.clone())
            rows.append(step)
            self._end_episodes(step)
        return torch.stack(rows, 0).reshape(-1)

    def _to_env(self, action: torch.Tensor) -> torch.Tensor:
        return self._low + (action.clamp(-1, 1) + 1) * (self._high - self._low) / 2

    def _end_episodes(self, step: TensorDict) -> None:
        self._running += step.get(schema.REWARD).reshape(-1).double()
        done = step.get(schema.DONE).reshape(-1)
        if done.any():
            self.finished_returns.extend(self._running[done].tolist())
            self._running[done] = 0.0
            n = int(done.sum())
            self._episode[done] = torch.arange(self._next_episode, self._next_episode + n)
            self._next_episode += n

    def close(self) -> None:
        self.env.close()
