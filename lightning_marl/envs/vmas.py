"""VMAS tasks (vectorised multi-agent particle simulator) through TorchRL's ``VmasEnv``.

Continuous actions only. VMAS itself signals the end of an episode at ``max_steps`` as a
termination, so the time limit is kept out of VMAS and set by a ``StepCounter``: time limits
arrive as ``truncated``, task completion (e.g. all navigation goals reached) as ``terminated``.
"""

from __future__ import annotations

import warnings

from torchrl.envs import Compose, StepCounter, TransformedEnv

from lightning_marl.envs.contract import TeamContract
from lightning_marl.errors import ConfigError
from lightning_marl.registry import register

DEFAULT_MAX_STEPS = 100


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
    """VMAS cooperative tasks (navigation, balance, simple_spread, ...), continuous actions.

    ``params`` go to the VMAS scenario (e.g. ``n_agents=3``); ``max_steps`` defaults to 100.

    Example:
        >>> env = make_vmas_env("navigation", num_envs=4, max_steps=10, n_agents=2)
        >>> env.rollout(10)["next", "truncated"][:, -1].all().item()
        True
    """
    from torchrl.envs.libs.vmas import VmasEnv

    tasks = vmas_tasks()
    if task not in tasks:
        raise ConfigError(f"unknown vmas task {task!r}; valid tasks: {', '.join(tasks)}")
    if not params.pop("continuous_actions", True):
        raise ConfigError("vmas envs run with continuous actions only; drop continuous_actions=False")
    max_steps = DEFAULT_MAX_STEPS if max_steps is None else max_steps
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base = VmasEnv(task, num_envs=num_envs, continuous_actions=True, seed=seed, device=device, **params)
        except (AssertionError, TypeError, ValueError) as error:
            raise ConfigError(f"vmas task {task!r} refused params {params}: {error}") from error
    unused = [str(w.message) for w in caught if "not used by the scenario" in str(w.message)]
    if unused:
        raise ConfigError(f"vmas task {task!r}: {unused[0].split(' This will')[0]}")
    if list(base.group_map) != ["agents"]:
        groups = {name: len(agents) for name, agents in base.group_map.items()}
        raise ConfigError(
            f"vmas task {task!r} has several agent groups {groups}; only single-group (cooperative) "
            "tasks are supported"
        )
    if -1 in base.full_observation_spec["agents", "observation"].shape:
        raise ConfigError(f"vmas task {task!r} has agents with different observation sizes; not supported")
    return TransformedEnv(base, Compose(StepCounter(max_steps), TeamContract()))
