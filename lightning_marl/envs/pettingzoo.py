"""A batch of PettingZoo parallel envs as one TorchRL env in the batch contract (MPE, MaMuJoCo).

A simple serial batch: the ``num_envs`` envs are stepped one after the other. Each is reset on
its own through TorchRL's ``"_reset"`` mask, so ``env.step_and_maybe_reset`` restarts only the
finished ones. Built on PettingZoo's parallel API instead of torchrl's ``PettingZooWrapper``:
a batch of those needs a ``SerialEnv`` of wrappers, MaMuJoCo's step infos carry keys its reset
infos lack (which breaks the wrapper), and scripted agents need the simulator anyway. Infos are
not passed on.

Agents with unequal observation sizes (MaMuJoCo Hopper 3x1: 8, 9, 8) are zero-padded to the
largest; ``env.obs_mask`` [N, O] (True = a real feature) says which entries are padding, and
``env_spec`` reports it. ``"state"`` is PettingZoo's ``state()``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from lightning_marl.envs.contract import TEAM_REWARD_MEAN, TEAM_REWARD_SHARED


class PettingZooBatch(EnvBase):
    """``envs`` (PettingZoo parallel envs of one task) as a TorchRL env of batch size [len(envs)].

    ``agents`` are the learners (the "agents" group); ``scripted(i)`` returns the actions of the
    other agents of env ``i`` for the next step; the team reward is the agents' mean reward
    (subclasses whose env shares one reward set ``team_reward_rule``); ``max_steps`` truncates episodes (the envs' own
    time limits also arrive as ``truncated``). Actions: discrete (all-True masks) or the envs' Box.

    Example:
        >>> from mpe2 import simple_spread_v3
        >>> envs = [simple_spread_v3.parallel_env(max_cycles=5) for _ in range(2)]
        >>> env = PettingZooBatch(envs, ["agent_0", "agent_1", "agent_2"], max_steps=5)
        >>> env.rollout(5)["next", "truncated"][:, -1].squeeze(-1).tolist()
        [True, True]
    """

    team_reward_rule = TEAM_REWARD_MEAN

    def __init__(self, envs: list, agents: list[str], *, max_steps: int, scripted: Callable | None = None,
                 seed: int = 0, device="cpu"):
        super().__init__(device=device, batch_size=torch.Size([len(envs)]))
        self._envs, self.max_steps, self._scripted = envs, max_steps, scripted
        self.group_map = {"agents": list(agents)}
        first = envs[0]
        sizes = [first.observation_space(a).shape[0] for a in agents]
        self._obs_dim = max(sizes)
        self.obs_mask = torch.arange(self._obs_dim).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)  # [N, O]
        if bool(self.obs_mask.all()):
            self.obs_mask = None  # equal sizes: nothing padded
        space = first.action_space(agents[0])
        self.discrete = hasattr(space, "n")
        self._seed, self._fresh_seed = seed, True
        self._steps = np.zeros(len(envs), dtype=np.int64)
        self._last = [None] * len(envs)  # each env's latest (observation, state): envs not reset keep theirs
        self._make_specs(first, space)

    def _make_specs(self, first, space) -> None:
        e, n, o = self.batch_size[0], len(self.group_map["agents"]), self._obs_dim
        observation = {"observation": Unbounded((e, n, o), device=self.device)}
        if self.discrete:
            action = Categorical(int(space.n), (e, n), dtype=torch.int64, device=self.device)
            observation["action_mask"] = Categorical(2, (e, n, int(space.n)), dtype=torch.bool, device=self.device)
        else:
            low, high = (torch.as_tensor(bound, dtype=torch.float32).expand(e, n, space.shape[0])
                         for bound in (space.low, space.high))
            action = Bounded(low.clone(), high.clone(), (e, n, space.shape[0]), device=self.device)
        state_dim = first.state_space.shape[0] if hasattr(first, "state_space") else first.state().shape[0]
        self.observation_spec = Composite(
            agents=Composite(observation, shape=(e, n)), state=Unbounded((e, state_dim), device=self.device), shape=(e,)
        )
        self.action_spec = Composite(agents=Composite(action=action, shape=(e, n)), shape=(e,))
        self.reward_spec = Composite(
            agents=Composite(reward=Unbounded((e, n, 1), device=self.device), shape=(e, n)),
            reward=Unbounded((e, 1), device=self.device),
            shape=(e,),
        )
        flag = Categorical(2, (e, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(e,))

    def _observe(self, index: int, observations: dict) -> None:
        padded = np.zeros((len(self.group_map["agents"]), self._obs_dim), dtype=np.float32)
        for j, name in enumerate(self.group_map["agents"]):
            padded[j, : observations[name].shape[0]] = observations[name]
        self._last[index] = (padded, np.asarray(self._envs[index].state(), dtype=np.float32))

    def _output(self) -> TensorDict:
        e, n = self.batch_size[0], len(self.group_map["agents"])
        agents = {"observation": torch.from_numpy(np.stack([obs for obs, _ in self._last]))}
        if self.discrete:
            k = self.full_action_spec["agents", "action"].space.n
            agents["action_mask"] = torch.ones(e, n, k, dtype=torch.bool)
        out = TensorDict(
            {"agents": TensorDict(agents, batch_size=(e, n)),
             "state": torch.from_numpy(np.stack([state for _, state in self._last]))},
            batch_size=self.batch_size,
        )
        return out.to(self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        e = self.batch_size[0]
        mask = torch.ones(e, dtype=torch.bool)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict["_reset"].reshape(e).cpu()
        for i in mask.nonzero().flatten().tolist():
            observations, _ = self._envs[i].reset(seed=self._seed + i if self._fresh_seed else None)
            self._observe(i, observations)
            self._steps[i] = 0
        self._fresh_seed = False
        out = self._output()
        false = torch.zeros(e, 1, dtype=torch.bool, device=self.device)
        for key in ("done", "terminated", "truncated"):
            out[key] = false.clone()
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        agents = self.group_map["agents"]
        actions = tensordict["agents", "action"].cpu().numpy()
        rewards, terminated, truncated = [], [], []
        for i, env in enumerate(self._envs):
            joint = {a: (int(actions[i, j]) if self.discrete else actions[i, j]) for j, a in enumerate(agents)}
            if self._scripted is not None:
                joint.update(self._scripted(i))
            observations, reward, term, trunc, _ = env.step(joint)
            self._observe(i, observations)
            self._steps[i] += 1
            rewards.append([float(reward[a]) for a in agents])
            terminated.append(any(term[a] for a in agents))
            truncated.append((any(trunc[a] for a in agents) or self._steps[i] >= self.max_steps) and not terminated[-1])
        out = self._output()
        reward = torch.tensor(rewards, dtype=torch.float32, device=self.device).unsqueeze(-1)  # [E, N, 1]
        out["agents", "reward"] = reward
        # One shared reward (MaMuJoCo): take it as it is, a float mean of copies may round.
        out["reward"] = reward[:, 0] if self.team_reward_rule == TEAM_REWARD_SHARED else reward.mean(-2)
        out["terminated"] = torch.tensor(terminated, device=self.device).unsqueeze(-1)
        out["truncated"] = torch.tensor(truncated, device=self.device).unsqueeze(-1)
        out["done"] = out["terminated"] | out["truncated"]
        return out

    def _set_seed(self, seed: int | None) -> None:
        self._seed, self._fresh_seed = (0 if seed is None else seed), True
