"""The scripted prey of predator-prey tasks (VMAS and MPE ``simple_tag``): flee the nearest predator.

Only the predators learn; the prey follows :func:`flee` every step, so a predator task is a fixed
cooperative problem. The rule: run straight away from the nearest predator, and, within
``margin`` of the arena's edge, add a push back toward the centre (a prey pinned in a corner is
caught at once). :class:`ScriptedPrey` is the TorchRL transform that plays the prey inside an env
and hides it from the policy: the env's "agents" group holds only the predators.
"""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDictBase
from torchrl.envs import Transform


def flee(prey: torch.Tensor, predators: torch.Tensor, bound: float = 1.0, margin: float = 0.3) -> torch.Tensor:
    """A unit direction for each prey: away from its nearest predator, back from the walls.

    ``prey``: positions [E, P, 2]; ``predators``: positions [E, M, 2]; returns [E, P, 2].

    Example:
        >>> prey = torch.tensor([[[0.0, 0.0]]])
        >>> predators = torch.tensor([[[0.5, 0.0], [0.0, 0.9]]])   # nearest is to the right
        >>> flee(prey, predators).tolist()
        [[[-1.0, 0.0]]]
    """
    offset = prey.unsqueeze(-2) - predators.unsqueeze(-3)  # [E, P, M, 2]
    distance = offset.norm(dim=-1)  # [E, P, M]
    nearest = distance.argmin(-1, keepdim=True)  # [E, P, 1]
    away = offset.gather(-2, nearest.unsqueeze(-1).expand(*nearest.shape, 2)).squeeze(-2)
    away = away / away.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    # Back from each wall, in proportion to how far past (bound - margin) the prey is.
    wall = (prey.abs() - (bound - margin)).clamp(min=0) / margin
    direction = away - 2.0 * wall * prey.sign()
    return direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def to_vmas_discrete(direction: torch.Tensor, dead_zone: float = 0.38) -> torch.Tensor:
    """Directions [..., 2] to VMAS's 9 discrete moves (x index * 3 + y index; per axis 0 stay,
    1 negative, 2 positive); an axis whose share of the unit direction is below ``dead_zone``
    stays still.

    Example:
        >>> to_vmas_discrete(torch.tensor([[1.0, 0.0], [-0.7, 0.7]]))
        tensor([6, 5])
    """
    axis = torch.where(direction.abs() < dead_zone, 0, torch.where(direction < 0, 1, 2))
    return axis[..., 0] * 3 + axis[..., 1]


def to_mpe_discrete(direction: torch.Tensor, dead_zone: float = 0.38) -> torch.Tensor:
    """Directions [..., 2] to PettingZoo MPE's 5 discrete moves (0 stay, 1 left, 2 right,
    3 down, 4 up): the dominant axis wins; a short direction stays.

    Example:
        >>> to_mpe_discrete(torch.tensor([[1.0, 0.2], [0.1, -0.9], [0.0, 0.0]]))
        tensor([2, 3, 0])
    """
    x, y = direction[..., 0], direction[..., 1]
    horizontal = torch.where(x < 0, 1, 2)
    vertical = torch.where(y < 0, 3, 4)
    move = torch.where(x.abs() >= y.abs(), horizontal, vertical)
    return torch.where(direction.norm(dim=-1) < dead_zone, 0, move)


class ScriptedPrey(Transform):
    """Plays the group ``group`` with a scripted policy and removes it from the env's interface.

    ``policy()`` returns the group's actions from the simulator's current state; before every
    step they are written to ``(group, "action")``; the group's observations, rewards and infos
    are dropped from the output and from the specs.

    Example:
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl.envs.libs.vmas import VmasEnv
        >>> base = VmasEnv("simple_tag", num_envs=2, group_map={"agents": ["adversary_0", "adversary_1",
        ...     "adversary_2"], "prey": ["agent_0"]})
        >>> env = TransformedEnv(base, ScriptedPrey("prey", lambda: torch.zeros(2, 1, 2)))
        >>> sorted(env.reset()["agents"].keys()), "prey" in env.reset().keys()
        (['observation'], False)
    """

    def __init__(self, group: str, policy: Callable[[], torch.Tensor]):
        super().__init__(in_keys=[], out_keys=[])
        self.group, self.policy = group, policy

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict.set((self.group, "action"), self.policy())

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return next_tensordict.exclude(self.group)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return tensordict_reset.exclude(self.group)

    def transform_input_spec(self, input_spec):
        del input_spec["full_action_spec"][self.group]
        return input_spec

    def transform_observation_spec(self, observation_spec):
        if self.group in observation_spec.keys():
            del observation_spec[self.group]
        return observation_spec

    def transform_reward_spec(self, reward_spec):
        if self.group in reward_spec.keys():
            del reward_spec[self.group]
        return reward_spec
