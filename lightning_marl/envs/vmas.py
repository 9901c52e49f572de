"""VMAS tasks (vectorised multi-agent particle simulator) through TorchRL's ``VmasEnv``.

Continuous actions by default (in [-1, 1] for the built-in tasks); with
``continuous_actions=False`` every agent picks one of VMAS's discrete moves (9 for 2-D tasks:
x index * 3 + y index, per axis 0 stay, 1 negative, 2 positive) and the env adds an all-True
``("agents", "action_mask")``.

Predator tasks: in ``simple_tag`` the predators ("adversary_*") are the "agents" group; in
``simple_world_comm`` the leader (who also speaks: 6 continuous action dims, or 36 discrete
actions = 9 moves x 4 words) and its 3 followers are merged into one "agents" group, actions
padded to the leader's width (the followers read the first 2 dims; discrete masks allow them
their 9 moves). In both the prey follows the scripted policy of :mod:`lightning_marl.envs.prey`
and is not part of the env's interface.

VMAS itself signals the end of an episode at ``max_steps`` as a termination, so the time limit
is kept out of VMAS and set by a ``StepCounter``: time limits arrive as ``truncated``, task
completion (e.g. all navigation goals reached) as ``terminated``. The team reward is the mean
of the agents' rewards (VMAS's shared-reward tasks give each agent the same value).
"""

from __future__ import annotations

import warnings

import torch
from torchrl.envs import Compose, StepCounter, TransformedEnv

from lightning_marl.envs.contract import TEAM_REWARD_MEAN, AllActionsAvailable, MergeGroups, TeamContract
from lightning_marl.envs.prey import ScriptedPrey, flee, to_vmas_discrete
from lightning_marl.errors import ConfigError
from lightning_marl.registry import register

DEFAULT_MAX_STEPS = 100
PREDATOR_TASKS = ("simple_tag", "simple_world_comm")  # the predators learn, the prey is scripted


def vmas_tasks() -> list[str]:
    """The VMAS scenario names (tasks with several agent groups are refused when built)."""
    import vmas

    return sorted(vmas.scenarios + vmas.mpe_scenarios)


@register("env", "vmas")
def make_vmas_env(
    task: str | None,
    *,
    num_envs: int = 32,
    seed: int = 0,
    device="cpu",
    max_steps: int | None = None,
    **params,
) -> TransformedEnv:
    """VMAS cooperative tasks (navigation, balance, simple_spread, simple_tag, ...).

    ``params`` go to the VMAS scenario (e.g. ``n_agents=3``), except ``continuous_actions``
    (default True; False gives discrete actions with an all-True mask); ``max_steps`` defaults
    to 100.

    Example:
        >>> env = make_vmas_env("navigation", num_envs=4, max_steps=10, n_agents=2)
        >>> env.rollout(10)["next", "truncated"][:, -1].all().item()
        True
    """
    from torchrl.envs.libs.vmas import VmasEnv

    tasks = vmas_tasks()
    if task not in tasks:
        raise ConfigError(f"unknown vmas task {task!r}; valid tasks: {', '.join(tasks)}")
    continuous = params.pop("continuous_actions", True)
    if not isinstance(continuous, bool):
        raise ConfigError(f"continuous_actions must be true or false, got {continuous!r}")
    max_steps = DEFAULT_MAX_STEPS if max_steps is None else max_steps
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base = VmasEnv(task, num_envs=num_envs, continuous_actions=continuous, seed=seed, device=device,
                           group_map=_group_map(task, params), **params)
        except (AssertionError, TypeError, ValueError) as error:
            raise ConfigError(f"vmas task {task!r} refused params {params}: {error}") from error
    unused = [str(w.message) for w in caught if "not used by the scenario" in str(w.message)]
    if unused:
        raise ConfigError(f"vmas task {task!r}: {unused[0].split(' This will')[0]}")
    transforms = [StepCounter(max_steps), TeamContract()]
    groups = list(base.group_map)
    if task == "simple_world_comm":  # the leader (who also talks) and its followers form one group
        merge = {group: (len(base.group_map[group]), _action_width(base, group)) for group in groups if group != "agent"}
        transforms = [ScriptedPrey("agent", _prey_policy(base, continuous)),
                      MergeGroups(merge, discrete=not continuous), *transforms]
    elif task in PREDATOR_TASKS:
        transforms.insert(0, ScriptedPrey("prey", _prey_policy(base, continuous)))
    elif groups != ["agents"]:
        sizes = {name: len(agents) for name, agents in base.group_map.items()}
        raise ConfigError(
            f"vmas task {task!r} has several agent groups {sizes}; only single-group (cooperative) "
            "tasks and the predator tasks simple_tag and simple_world_comm are supported"
        )
    if any(-1 in base.full_observation_spec[group, "observation"].shape for group in groups):
        raise ConfigError(f"vmas task {task!r} has agents with different observation sizes; not supported")
    if not continuous and task != "simple_world_comm":
        transforms.append(AllActionsAvailable(base.full_action_spec["agents", "action"].space.n))
    env = TransformedEnv(base, Compose(*transforms))
    env.team_reward_rule = TEAM_REWARD_MEAN
    if task == "simple_world_comm":
        env.group_map = {"agents": [name for group in groups if group != "agent" for name in base.group_map[group]]}
    return env


def _action_width(base, group: str) -> int:
    """Discrete: the number of actions; continuous: the action size."""
    action = base.full_action_spec[group, "action"]
    return action.space.n if action.domain == "discrete" else action.shape[-1]


def _group_map(task: str, params: dict) -> dict | None:
    """simple_tag: the predators form the "agents" group, the prey the "prey" group."""
    if task != "simple_tag":
        return None  # simple_world_comm keeps VMAS's groups: leader, followers, prey
    predators, prey = params.get("num_adversaries", 3), params.get("num_good_agents", 1)
    return {
        "agents": [f"adversary_{i}" for i in range(predators)],
        "prey": [f"agent_{i}" for i in range(prey)],
    }


def _prey_policy(base, continuous: bool):
    """The prey's actions, from the simulator's current positions (see :func:`prey.flee`)."""
    world = base._env.world
    predators = [agent for agent in world.agents if agent.adversary]
    prey = [agent for agent in world.agents if not agent.adversary]
    bound = float(world.x_semidim or 1.0)

    def policy() -> torch.Tensor:
        prey_pos = torch.stack([agent.state.pos for agent in prey], dim=1)  # [E, P, 2]
        predator_pos = torch.stack([agent.state.pos for agent in predators], dim=1)
        direction = flee(prey_pos, predator_pos, bound=bound)
        return direction if continuous else to_vmas_discrete(direction)

    return policy
