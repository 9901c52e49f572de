"""Exploration during online collection: sequential (one agent at a time) and epsilon-greedy.

Both plugins implement the ``explore(td, module)`` hook: ``td`` [E] holds ("agents", "action")
(the greedy actions: indices [E, N], or [E, N, A] in [-1, 1]) and, for discrete tasks,
("agents", "action_mask") [E, N, K]; they return it with the actions to execute. Their random
stream is re-seeded from (seed, rank, env_steps) at each call: every agent of a team can compute
it from the common seed without communicating, and a resumed run draws the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_marl.data import schema
from lightning_marl.data.datamodule import sample_seed
from lightning_marl.plugin import Plugin
from lightning_marl.registry import register
from lightning_marl_plugins.value_memory.memory import linear_schedule


def random_actions(like: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Uniform random actions shaped like ``like``: available indices [..., N] (``mask`` [..., N, K]
    or all available when None; a row with nothing available keeps ``like``'s action), or uniform
    in [-1, 1] for float actions [..., N, A]. Drawn on the CPU with ``generator``.

    Example:
        >>> mask = torch.tensor([[[False, True, False]]])
        >>> random_actions(torch.zeros(1, 1, dtype=torch.int64), mask, torch.Generator())
        tensor([[1]])
    """
    if like.dtype.is_floating_point:
        return (torch.rand(like.shape, generator=generator) * 2 - 1).to(like.device, like.dtype)
    weights = mask.reshape(-1, mask.shape[-1]).float().cpu()
    none = weights.sum(-1) == 0
    weights[none] = 1.0  # drawn, then replaced by the given action below
    picks = torch.multinomial(weights, 1, generator=generator).reshape(like.shape).to(like.device)
    return torch.where(none.reshape(like.shape).to(like.device), like, picks)


def sequential_deviation(action: torch.Tensor, mask: torch.Tensor | None, epsilon: float,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """At most one agent per env deviates: env e draws agent k_e uniformly and, with probability
    ``epsilon``, k_e takes a random available action. Returns (actions, deviating agent [E], -1 = none).

    Example:
        >>> greedy, mask = torch.zeros(4, 3, dtype=torch.int64), torch.ones(4, 3, 5, dtype=torch.bool)
        >>> actions, who = sequential_deviation(greedy, mask, 1.0, torch.Generator().manual_seed(0))
        >>> bool(((actions != greedy).sum(-1) <= 1).all()), bool((who >= 0).all())
        (True, True)
    """
    n_envs, n_agents = action.shape[0], action.shape[1]
    agent = torch.randint(n_agents, (n_envs,), generator=generator)
    deviate = torch.rand(n_envs, generator=generator) < epsilon
    if mask is None and not action.dtype.is_floating_point:
        raise ValueError("discrete actions need an action mask (all True when every action is available)")
    rows = torch.arange(n_envs)
    chosen = action[rows, agent]  # [E] or [E, A]
    chosen_mask = None if mask is None else mask[rows, agent]
    draw = random_actions(chosen, chosen_mask, generator)
    out = action.clone()
    keep = deviate.to(action.device).reshape(-1, *([1] * (chosen.dim() - 1)))
    out[rows, agent] = torch.where(keep, draw, chosen)
    return out, torch.where(deviate, agent, torch.full_like(agent, -1))


def independent_deviation(action: torch.Tensor, mask: torch.Tensor | None, epsilon: float,
                          generator: torch.Generator) -> torch.Tensor:
    """Epsilon-greedy for every agent independently: [E, N] (or [E, N, A]) -> the executed actions.

    Example:
        >>> greedy = torch.zeros(2, 3, dtype=torch.int64)
        >>> torch.equal(independent_deviation(greedy, None, 0.0, torch.Generator()), greedy)
        True
    """
    n_envs, n_agents = action.shape[0], action.shape[1]
    if mask is None and not action.dtype.is_floating_point:
        mask = torch.ones(*action.shape, int(action.max()) + 1, dtype=torch.bool)
    deviate = torch.rand(n_envs, n_agents, generator=generator) < epsilon
    draw = random_actions(action, mask, generator)
    keep = deviate.to(action.device).reshape(n_envs, n_agents, *([1] * (action.dim() - 2)))
    return torch.where(keep, draw, action)


class _Exploration(Plugin):
    @dataclass
    class Params:
        start: float = 0.2  # [choice] epsilon at env step 0 (the offline policy is already good)
        end: float = 0.05
        anneal_env_steps: int = 50_000
        seed: int = 0  # the common seed of the team's random stream

    def epsilon(self, env_steps: int) -> float:
        """epsilon_t at ``env_steps`` environment steps."""
        return linear_schedule(self.params.start, self.params.end, self.params.anneal_env_steps, env_steps)

    def generator(self, module) -> torch.Generator:
        rank = module.global_rank if getattr(module, "_trainer", None) is not None else 0
        return torch.Generator().manual_seed(sample_seed(self.params.seed, rank, module.env_steps))


@register("plugin", "sequential_exploration")
class SequentialExploration(_Exploration):
    """Sequential exploration (OVMSE): at each step at most ONE agent deviates, drawn from a random
    stream shared by the team through a common seed, taking a uniformly random available action
    with probability epsilon_t (``start`` -> ``end`` linearly over ``anneal_env_steps``); the
    others act greedily. Works for discrete and continuous actions.

    Example:
        >>> from types import SimpleNamespace
        >>> from tensordict import TensorDict
        >>> td = TensorDict({("agents", "action"): torch.zeros(8, 3, dtype=torch.int64),
        ...                  ("agents", "action_mask"): torch.ones(8, 3, 4, dtype=torch.bool)}, [8])
        >>> plugin = SequentialExploration(SequentialExploration.Params(start=1.0, end=1.0))
        >>> out = plugin.explore(td, SimpleNamespace(env_steps=0))
        >>> bool(((out["agents", "action"] != 0).sum(-1) <= 1).all())
        True
    """

    def explore(self, td, module):
        action, _ = sequential_deviation(td.get(schema.ACTION), td.get(schema.ACTION_MASK, None),
                                         self.epsilon(module.env_steps), self.generator(module))
        td.set(schema.ACTION, action)
        return td


@register("plugin", "epsilon_greedy")
class EpsilonGreedy(_Exploration):
    """Epsilon-greedy for every agent (the OVMSE baseline): each agent independently takes a
    uniformly random available action with probability epsilon_t, else its greedy action.

    Example:
        >>> from types import SimpleNamespace
        >>> from tensordict import TensorDict
        >>> td = TensorDict({("agents", "action"): torch.zeros(4, 2, dtype=torch.int64),
        ...                  ("agents", "action_mask"): torch.ones(4, 2, 3, dtype=torch.bool)}, [4])
        >>> EpsilonGreedy().explore(td, SimpleNamespace(env_steps=0))["agents", "action"].shape
        torch.Size([4, 2])
    """

    def explore(self, td, module):
        action = independent_deviation(td.get(schema.ACTION), td.get(schema.ACTION_MASK, None),
                                       self.epsilon(module.env_steps), self.generator(module))
        td.set(schema.ACTION, action)
        return td
