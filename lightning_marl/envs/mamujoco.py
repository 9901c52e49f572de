"""Multi-agent MuJoCo (Gymnasium-Robotics ``mamujoco_v1``) as a batched TorchRL env.

A serial batch of MaMuJoCo parallel envs (:class:`lightning_marl.envs.pettingzoo.PettingZooBatch`):
each agent controls some joints of one robot, actions are continuous in [-1, 1], every agent
gets the same reward (the robot's), so the team reward is that shared reward. The robot falling
(Hopper, Walker2d, Ant) ``terminated``; the time limit ``max_steps`` (default 1000, MuJoCo's)
``truncated``. Step infos are dropped: their keys differ from the reset infos', which is what
breaks torchrl's ``PettingZooWrapper`` on these envs.

Tasks are "Scenario-config": HalfCheetah-2x3, HalfCheetah-6x1, Hopper-3x1, Ant-2x4,
Walker2d-2x3 (and any other scenario/config pair MaMuJoCo knows). Agents with unequal
observation sizes (Hopper-3x1: 8, 9, 8; HalfCheetah-6x1: 9, 9, 8, 9, 9, 8) are zero-padded to the
largest, with the mask of real features in ``env.obs_mask`` and ``env_spec(env)["obs_mask"]``.
"""

from __future__ import annotations

import warnings

from lightning_marl.envs.contract import TEAM_REWARD_SHARED
from lightning_marl.envs.pettingzoo import PettingZooBatch
from lightning_marl.errors import ConfigError
from lightning_marl.registry import register

TASKS = ("HalfCheetah-2x3", "HalfCheetah-6x1", "Hopper-3x1", "Ant-2x4", "Walker2d-2x3")
DEFAULT_MAX_STEPS = 1000


def _mamujoco():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium_robotics warns about unrelated Adroit envs on import
            from gymnasium_robotics import mamujoco_v1
    except ImportError as error:
        raise ConfigError(
            f"env 'mamujoco' needs gymnasium-robotics and mujoco ({error}); "
            'install the extra: pip install "lightning_marl[envs]"'
        ) from error
    return mamujoco_v1


class MaMuJoCoEnv(PettingZooBatch):
    """``num_envs`` copies of one multi-agent MuJoCo task, in the batch contract.

    Example:
        >>> env = MaMuJoCoEnv("Hopper-3x1", num_envs=2, max_steps=5)
        >>> env.obs_mask.sum(-1).tolist()                     # real observation sizes
        [8, 9, 8]
        >>> env.reset()["agents", "observation"].shape
        torch.Size([2, 3, 9])
    """

    team_reward_rule = TEAM_REWARD_SHARED

    def __init__(self, task: str, num_envs: int = 8, *, max_steps: int = DEFAULT_MAX_STEPS, seed: int = 0,
                 device="cpu", **params):
        scenario, _, config = (task or "").partition("-")
        if not config:
            raise ConfigError(f"mamujoco tasks are 'Scenario-config' such as {', '.join(TASKS)}; got {task!r}")
        mamujoco = _mamujoco()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                envs = [mamujoco.parallel_env(scenario, config, **params) for _ in range(num_envs)]
        except Exception as error:  # MaMuJoCo raises assorted types for unknown scenarios and configs
            raise ConfigError(
                f"mamujoco could not build {task!r} with params {params} ({type(error).__name__}: {error}); "
                f"known tasks: {', '.join(TASKS)}"
            ) from error
        self.task = task
        super().__init__(envs, list(envs[0].possible_agents), max_steps=max_steps, seed=seed, device=device)


@register("env", "mamujoco")
def make_mamujoco_env(
    task: str | None,
    *,
    num_envs: int = 8,
    seed: int = 0,
    device="cpu",
    max_steps: int | None = None,
    **params,
) -> MaMuJoCoEnv:
    """Multi-agent MuJoCo: HalfCheetah-2x3, HalfCheetah-6x1, Hopper-3x1, Ant-2x4, Walker2d-2x3.

    ``params`` go to ``mamujoco_v1.parallel_env`` (e.g. ``agent_obsk=1``); ``max_steps``
    defaults to 1000.
    """
    max_steps = DEFAULT_MAX_STEPS if max_steps is None else max_steps
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
    return MaMuJoCoEnv(task, num_envs, max_steps=max_steps, seed=seed, device=device, **params)
