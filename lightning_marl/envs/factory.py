"""One factory for every environment, and the shapes a method needs to act in it."""

from __future__ import annotations

from torchrl.envs import EnvBase, StepCounter, TransformedEnv

from lightning_marl.errors import ConfigError
from lightning_marl.registry import get


def make_env(
    name: str,
    task: str | None = None,
    *,
    num_envs: int = 32,
    seed: int = 0,
    device="cpu",
    max_steps: int | None = None,
    **params,
) -> EnvBase:
    """A batched TorchRL env (batch size [num_envs]) that speaks the batch contract.

    ``name`` is a registered env kind ("matrix", "vmas", ...), ``task`` the game or scenario,
    ``params`` the task's own options.

    Example:
        >>> env = make_env("matrix", "climbing", num_envs=8)
        >>> env.reset()["agents", "observation"].shape
        torch.Size([8, 2, 1])
    """
    factory = get("env", name)  # a ConfigError listing the registered envs if unknown
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
    return factory(task, num_envs=num_envs, seed=seed, device=device, max_steps=max_steps, **params)


def _max_steps(env: EnvBase) -> int | None:
    if isinstance(env, TransformedEnv):
        for transform in env.transform:
            if isinstance(transform, StepCounter):
                return transform.max_steps
        return _max_steps(env.base_env)
    return getattr(env, "max_steps", None)


def env_spec(env: EnvBase) -> dict:
    """The shapes of an env made by ``make_env``: agents, observation/state sizes, actions.

    Continuous bounds are agent 0's (VMAS gives every agent of a group the same range).
    ``team_reward_rule`` says how ("next", "reward") is made (datasets record it); envs whose
    agents have unequal observation sizes pad them and add ``obs_mask`` [N][O] (True = real).

    Example:
        >>> spec = env_spec(make_env("matrix", "penalty", num_envs=2))
        >>> spec["n_agents"], spec["n_actions"], spec["discrete"]
        (2, 3, True)
    """
    obs = env.full_observation_spec["agents", "observation"]
    action = env.full_action_spec["agents", "action"]
    n_agents = obs.shape[-2]
    group_map = getattr(env, "group_map", None) or {}
    spec = {
        "n_agents": n_agents,
        "agent_names": list(group_map.get("agents", [f"agent_{i}" for i in range(n_agents)])),
        "obs_dim": obs.shape[-1],
        "state_dim": env.full_observation_spec["state"].shape[-1],
        "discrete": action.domain == "discrete",
        "max_steps": _max_steps(env),
        "team_reward_rule": getattr(env, "team_reward_rule", None),
    }
    obs_mask = getattr(env, "obs_mask", None)  # heterogeneous agents: which padded features are real
    if obs_mask is not None:
        spec["obs_mask"] = obs_mask.tolist()
    if spec["discrete"]:
        spec["n_actions"] = action.space.n
    else:
        first = (0,) * (action.ndim - 1)  # env 0, agent 0
        spec["action_dim"] = action.shape[-1]
        spec["action_low"] = action.space.low[first].tolist()
        spec["action_high"] = action.space.high[first].tolist()
    return spec
