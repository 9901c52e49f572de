"""A transform that completes a multi-agent TorchRL env to the batch contract."""

from __future__ import annotations

from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import Transform


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
