"""Transforms that complete a multi-agent TorchRL env to the batch contract."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import Transform

# How an env's team reward ("next", "reward") is made: recorded in env_spec and in datasets.
TEAM_REWARD_MEAN = "mean of the per-agent rewards the environment gives"
TEAM_REWARD_SHARED = "the environment's shared team reward"


class TeamContract(Transform):
    """Adds ``"state"`` (the agents' observations concatenated) and the team ``"reward"``
    (the mean over agents of ``("agents", "reward")``) to an env whose agent group is "agents".

    Example:
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl.envs.libs.vmas import VmasEnv
        >>> env = TransformedEnv(VmasEnv("balance", num_envs=2), TeamContract())
        >>> env.rollout(3)["next", "reward"].shape
        torch.Size([2, 3, 1])
    """

    def _add_state(self, td: TensorDictBase) -> TensorDictBase:
        td["state"] = td["agents", "observation"].flatten(-2)
        return td

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        # VMAS shared-reward tasks give every agent the same value, so the mean is that value.
        next_tensordict["reward"] = next_tensordict["agents", "reward"].mean(-2)
        return self._add_state(next_tensordict)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._add_state(tensordict_reset)

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        obs = observation_spec["agents", "observation"]
        observation_spec["state"] = Unbounded(
            (*observation_spec.shape, obs.shape[-2] * obs.shape[-1]), device=obs.device, dtype=obs.dtype
        )
        return observation_spec

    def transform_reward_spec(self, reward_spec: Composite) -> Composite:
        reward = reward_spec["agents", "reward"]
        reward_spec["reward"] = Unbounded((*reward_spec.shape, 1), device=reward.device, dtype=reward.dtype)
        return reward_spec


class AllActionsAvailable(Transform):
    """Adds an all-True ``("agents", "action_mask")`` [E, N, K] for discrete envs without masks.

    Example:
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl.envs.libs.vmas import VmasEnv
        >>> env = TransformedEnv(VmasEnv("balance", num_envs=2, continuous_actions=False), AllActionsAvailable(9))
        >>> mask = env.reset()["agents", "action_mask"]
        >>> mask.shape, mask.dtype, bool(mask.all())
        (torch.Size([2, 3, 9]), torch.bool, True)
    """

    def __init__(self, n_actions: int):
        super().__init__(in_keys=[], out_keys=[])
        self.n_actions = n_actions

    def _add_mask(self, td: TensorDictBase) -> TensorDictBase:
        shape = (*td["agents", "observation"].shape[:-1], self.n_actions)
        td["agents", "action_mask"] = torch.ones(shape, dtype=torch.bool, device=td.device)
        return td

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return self._add_mask(next_tensordict)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._add_mask(tensordict_reset)

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        obs = observation_spec["agents", "observation"]
        observation_spec["agents", "action_mask"] = Categorical(
            2, (*obs.shape[:-1], self.n_actions), dtype=torch.bool, device=obs.device
        )
        return observation_spec


class MergeGroups(Transform):
    """Presents several agent groups of a TorchRL env as the one group ``"agents"``.

    ``groups`` maps each source group to (agents, action width): observations (equal sizes) and
    rewards are concatenated along the agent dimension in that order; actions are padded to the
    widest group. Continuous: a narrower group reads the first dims of its agents' actions (the
    rest are ignored). Discrete: ``("agents", "action_mask")`` allows each agent only its own
    actions (an index past them wraps around, so unmasked random actions stay legal).

    Example:
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl.envs.libs.vmas import VmasEnv
        >>> base = VmasEnv("simple_world_comm", num_envs=2, continuous_actions=False)
        >>> merge = MergeGroups({"lead_adversary": (1, 36), "adversary": (3, 9)}, discrete=True)
        >>> td = TransformedEnv(base, merge).reset()
        >>> td["agents", "observation"].shape[:2], td["agents", "action_mask"].sum(-1)[0].tolist()
        (torch.Size([2, 4]), [36, 9, 9, 9])
    """

    def __init__(self, groups: dict[str, tuple[int, int]], discrete: bool, target: str = "agents"):
        super().__init__(in_keys=[], out_keys=[])
        self.groups, self.discrete, self.target = dict(groups), discrete, target
        self.width = max(width for _, width in self.groups.values())
        widths = torch.tensor([width for n, width in self.groups.values() for _ in range(n)])
        self._mask = torch.arange(self.width) < widths.unsqueeze(-1)  # [N, K]: each agent's own actions

    def _merge(self, td: TensorDictBase, reward: bool) -> TensorDictBase:
        parts = {"observation": torch.cat([td[g, "observation"] for g in self.groups], dim=-2)}
        if reward:
            parts["reward"] = torch.cat([td[g, "reward"] for g in self.groups], dim=-2)
        batch = parts["observation"].shape[:-1]  # [E, N]
        if self.discrete:
            parts["action_mask"] = self._mask.to(td.device).expand(*batch, -1)
        return td.exclude(*self.groups).set(self.target, TensorDict(parts, batch_size=batch, device=td.device))

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return self._merge(next_tensordict, reward=True)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._merge(tensordict_reset, reward=False)

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict[self.target, "action"]
        start = 0
        for group, (n, width) in self.groups.items():
            # discrete indices past a group's own actions wrap around (the action mask rules them out)
            part = actions[..., start:start + n] % width if self.discrete else actions[..., start:start + n, :width]
            tensordict[group, "action"] = part.contiguous()
            start += n
        return tensordict

    def transform_input_spec(self, input_spec):
        actions = input_spec["full_action_spec"]
        sources = [actions[g, "action"] for g in self.groups]
        shape = (*actions.shape, sum(n for n, _ in self.groups.values()))
        if self.discrete:
            merged = Categorical(self.width, shape, dtype=torch.int64, device=sources[0].device)
        else:
            def pad(bound, fill):
                return torch.cat([torch.nn.functional.pad(b, (0, self.width - b.shape[-1]), value=fill)
                                  for b in bound], dim=-2)
            low = pad([s.space.low for s in sources], -1.0)
            high = pad([s.space.high for s in sources], 1.0)
            merged = Bounded(low, high, (*shape, self.width), device=sources[0].device)
        for g in self.groups:
            del actions[g]
        actions[self.target] = Composite(action=merged, shape=shape)
        return input_spec

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        obs = [observation_spec[g, "observation"] for g in self.groups]
        shape = (*observation_spec.shape, sum(n for n, _ in self.groups.values()))
        merged = {"observation": Unbounded((*shape, obs[0].shape[-1]), device=obs[0].device, dtype=obs[0].dtype)}
        if self.discrete:
            merged["action_mask"] = Categorical(2, (*shape, self.width), dtype=torch.bool, device=obs[0].device)
        for g in self.groups:
            del observation_spec[g]
        observation_spec[self.target] = Composite(merged, shape=shape)
        return observation_spec

    def transform_reward_spec(self, reward_spec: Composite) -> Composite:
        rewards = [reward_spec[g, "reward"] for g in self.groups]
        shape = (*reward_spec.shape, sum(n for n, _ in self.groups.values()))
        for g in self.groups:
            del reward_spec[g]
        reward_spec[self.target] = Composite(reward=Unbounded((*shape, 1), device=rewards[0].device), shape=shape)
        return reward_spec
