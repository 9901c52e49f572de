"""Built-in dataset recipes: small datasets built on first use and cached in the data directory.

The data directory is ``$LIGHTNING_MARL_DATA`` if set, else ``~/.cache/lightning_marl/datasets``.
A recipe is built once (under a file lock, so concurrent DDP ranks or runs wait for one builder)
and written atomically; later runs load the cached copy.

Example:
    >>> path = ensure_recipe("vmas_navigation")          # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightning_marl.collect.behaviour import focus_fire_heuristic, navigation_heuristic, uniform_random
from lightning_marl.collect.collector import collect_transitions
from lightning_marl.collect.matrix import continuous_agree_transitions, matrix_game_transitions
from lightning_marl.data.dataset import write_dataset
from lightning_marl.data.schema import TaskSpec
from lightning_marl.envs import env_spec, make_env, payoff, rollout_returns
from lightning_marl.envs.contract import TEAM_REWARD_MEAN
from lightning_marl.errors import ConfigError

DATA_ENV = "LIGHTNING_MARL_DATA"


@dataclass
class Recipe:
    """How to build one dataset: env, behaviour mixture, size, seed."""

    description: str
    env: dict
    episodes: int
    behaviour: str
    mixture: dict = field(default_factory=dict)
    joint_actions: list = field(default_factory=list)  # behaviour "matrix": joint actions and their probabilities
    num_envs: int = 50
    reference_episodes: int = 64
    seed: int = 0
    version: int = 1
    discrete_noise: bool = False  # noise levels are per-agent, per-step probabilities of a random valid action


RECIPES: dict[str, Recipe] = {
    "vmas_navigation": Recipe(
        description="VMAS navigation, 3 agents, 100 steps; mixed quality: per episode the scripted "
        "heuristic with noise std 0.1 (40%), std 0.5 (40%) or uniform random actions (20%); 200 episodes",
        env={"name": "vmas", "task": "navigation", "max_steps": 100, "params": {"n_agents": 3}},
        episodes=200,
        behaviour="navigation_heuristic",
        mixture={"0.1": 0.4, "0.5": 0.4, "random": 0.2},
    ),
    "climbing_coordinated": Recipe(
        description="climbing matrix game, only coordinated joint actions: (0,0) 25% (the optimum, 11), "
        "(1,1) 45% (7), (2,2) 30% (5); 2000 one-step episodes",
        env={"name": "matrix", "task": "climbing", "max_steps": None, "params": {}},
        episodes=2000,
        behaviour="matrix",
        reference_episodes=4096,
        joint_actions=[[[0, 0], 0.25], [[1, 1], 0.45], [[2, 2], 0.30]],
    ),
    "agree_two_modes": Recipe(
        description="continuous agree game, 3 agents: half the episodes every agent near +1, half every agent "
        "near -1 (noise std 0.1), nothing in between: two equally good joint modes (the multimodal case of "
        "OMSD); 2000 one-step episodes",
        env={"name": "matrix", "task": "agree", "max_steps": None, "params": {"n_agents": 3, "continuous": True}},
        episodes=2000,
        behaviour="agree_two_modes",
        reference_episodes=4096,
    ),
    "smax_3m": Recipe(
        description="JaxMARL SMAX 3m (3 marines against SMAX's heuristic enemy, 100 steps); mixed quality: per "
        "episode the focus-fire heuristic (shoot the first enemy in range, else move east) with each ally "
        "taking a uniformly random available action with probability 0.1 (40%), 0.5 (40%) or 1.0 (20%) "
        "at every step; 1000 episodes",
        env={"name": "smax", "task": "3m", "max_steps": 100, "params": {}},
        episodes=1000,
        behaviour="focus_fire",
        mixture={"0.1": 0.4, "0.5": 0.4, "random": 0.2},
        discrete_noise=True,
        num_envs=64,
        reference_episodes=128,
    ),
}


_HEURISTICS = {"navigation_heuristic": navigation_heuristic, "focus_fire": focus_fire_heuristic}


def data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "lightning_marl" / "datasets")


def recipe_path(name: str) -> Path:
    return data_dir() / f"{name}-v{get_recipe(name).version}"


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"no dataset recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def ensure_recipe(name: str, progress: bool = True) -> Path:
    """The path of a built recipe, building it first if it is not in the data directory."""
    path = recipe_path(name)
    if (path / "metadata.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "metadata.json").exists():
            build_recipe(name, path, progress=progress)
    return path


def _mixture_policy(recipe: Recipe, spec: dict, generator: torch.Generator):
    """A behaviour whose quality (noise level or random) is redrawn per env at every episode."""
    expert = _HEURISTICS[recipe.behaviour](spec)
    random = uniform_random(spec, generator)
    levels = list(recipe.mixture)
    probs = torch.tensor([recipe.mixture[k] for k in levels])
    noise = torch.tensor([0.0 if k == "random" else float(k) for k in levels])
    is_random = torch.tensor([k == "random" for k in levels])
    low = torch.tensor(spec.get("action_low") or [0.0])
    high = torch.tensor(spec.get("action_high") or [0.0])
    level_of_env = torch.zeros(recipe.num_envs, dtype=torch.int64)

    def on_reset(done: torch.Tensor) -> None:
        draws = torch.multinomial(probs, int(done.sum()), replacement=True, generator=generator)
        level_of_env[done] = draws

    def act(observation, mask=None):
        action = expert(observation, mask)
        if recipe.discrete_noise:
            pick = torch.rand(action.shape, generator=generator) < noise[level_of_env].unsqueeze(-1)
            pick |= is_random[level_of_env].unsqueeze(-1)
            return torch.where(pick, random(observation, mask), action)
        std = (noise[level_of_env] * (high - low).mean()).view(-1, 1, 1)
        action = action + std * torch.randn(action.shape, generator=generator)
        action = torch.maximum(torch.minimum(action, high), low)
        use_random = is_random[level_of_env].view(-1, 1, 1)
        return torch.where(use_random, random(observation, mask), action)

    return act, on_reset


def _constant_joint_action(joint_action):
    """The 'expert' of a matrix game: always play the given joint action."""
    def act(observation, mask=None):
        action = torch.as_tensor(joint_action)
        return action.expand(*observation.shape[:-2], *action.shape)

    return act


def build_recipe(name: str, path: Path, progress: bool = True) -> Path:
    recipe = get_recipe(name)
    env_cfg = recipe.env
    make = lambda n, seed: make_env(env_cfg["name"], env_cfg["task"], num_envs=n, seed=seed,  # noqa: E731
                                    max_steps=env_cfg["max_steps"], **env_cfg["params"])
    print(f"building dataset recipe {name!r} into {path} (once; cached afterwards)", file=sys.stderr)
    env = make(recipe.num_envs, recipe.seed)
    spec = env_spec(env)
    if recipe.behaviour == "matrix":
        joint_actions = [action for action, _ in recipe.joint_actions]
        transitions, _ = matrix_game_transitions(env_cfg["task"], joint_actions,
                                                 [p for _, p in recipe.joint_actions], n=recipe.episodes,
                                                 seed=recipe.seed, n_actions=spec["n_actions"], **env_cfg["params"])
        best = max(joint_actions, key=lambda a: float(payoff(env_cfg["task"], torch.tensor(a), **env_cfg["params"])))
        expert = _constant_joint_action(best)
        expert_source = f"the best joint action in the data, {tuple(best)}"
    elif recipe.behaviour == "agree_two_modes":
        half = recipe.episodes // 2
        n_agents = env_cfg["params"]["n_agents"]
        modes = [continuous_agree_transitions(n, n_agents, good_fraction=1.0, mode=mode, noise=0.1, seed=recipe.seed + i)[0]
                 for i, (n, mode) in enumerate(((half, 1.0), (recipe.episodes - half, -1.0)))]
        modes[1]["episode"] += half
        transitions = torch.cat(modes)
        expert = _constant_joint_action([[1.0]] * n_agents)
        expert_source = "every agent playing +1"
    else:
        generator = torch.Generator().manual_seed(recipe.seed)
        act, on_reset = _mixture_policy(recipe, spec, generator)
        transitions = collect_transitions(env, act, recipe.episodes, spec, seed=recipe.seed, progress=progress,
                                          on_reset=on_reset)
        expert = _HEURISTICS[recipe.behaviour](spec)
        expert_source = f"the noiseless {recipe.behaviour}"
    reference_env = make(recipe.num_envs, recipe.seed + 1)
    random_return = rollout_returns(reference_env, uniform_random(spec, torch.Generator().manual_seed(1)),
                                    recipe.reference_episodes, seed=recipe.seed + 1)["mean"]
    expert_return = rollout_returns(reference_env, expert, recipe.reference_episodes, seed=recipe.seed + 1)["mean"]
    env.close()
    reference_env.close()
    task_spec = TaskSpec(
        n_agents=spec["n_agents"], obs_dim=spec["obs_dim"], state_dim=spec["state_dim"],
        discrete=spec["discrete"], action_dim=spec.get("action_dim", 0), n_actions=spec.get("n_actions", 0),
        action_low=spec.get("action_low", []), action_high=spec.get("action_high", []),
        agent_names=spec["agent_names"],
    )
    import tensordict
    import torchrl

    write_dataset(
        path,
        transitions,
        {
            "id": name,
            "spec": task_spec,
            "env": {"name": env_cfg["name"], "task": env_cfg["task"], "params": env_cfg["params"],
                    "max_steps": env_cfg["max_steps"]},
            "quality": {"matrix": "coordinated", "agree_two_modes": "expert"}.get(recipe.behaviour, "mixed"),
            "description": recipe.description,
            "reference_returns": {
                "random": random_return, "expert": expert_return,
                "source": f"rollouts of the uniform random policy and of {expert_source}, "
                          f"{recipe.reference_episodes} episodes each",
            },
            "team_reward_rule": spec["team_reward_rule"] or TEAM_REWARD_MEAN,
            "generation": {
                "command": f"lightning_marl recipe {name}", "seed": recipe.seed, "recipe_version": recipe.version,
                "versions": {"torch": torch.__version__, "torchrl": torchrl.__version__,
                             "tensordict": tensordict.__version__, "python": platform.python_version()},
            },
        },
        overwrite=True,
    )
    return path
