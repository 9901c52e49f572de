"""Behaviour policies for collecting datasets and measuring reference returns.

Every policy is a function ``act(observation [E, N, O], mask [E, N, K] | None) -> actions``
returning int64 indices [E, N] (discrete) or float32 [E, N, A] in the env's bounds, the
signature ``lightning_marl.envs.rollout_returns`` takes. ``spec`` is ``env_spec(env)``.
"""

from __future__ import annotations

from typing import Callable

import torch

Act = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _bounds(spec: dict, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.tensor(spec["action_low"], dtype=torch.float32, device=like.device)
    high = torch.tensor(spec["action_high"], dtype=torch.float32, device=like.device)
    return low, high


def uniform_random(spec: dict, generator: torch.Generator | None = None) -> Act:
    """Uniform over the available actions (discrete) or uniform in the bounds (continuous).

    Example:
        >>> spec = {"discrete": True, "n_actions": 3}
        >>> act = uniform_random(spec, torch.Generator().manual_seed(0))
        >>> act(torch.zeros(4, 2, 1), None).shape
        torch.Size([4, 2])
    """

    def act(observation: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch = observation.shape[:-1]  # [E, N]
        if spec["discrete"]:
            if mask is None:
                mask = torch.ones(*batch, spec["n_actions"], dtype=torch.bool)
            # multinomial draws on the generator's device: sample on the CPU, move afterwards.
            weights = mask.reshape(-1, mask.shape[-1]).float().cpu()
            picks = torch.multinomial(weights, 1, generator=generator)
            return picks.reshape(batch).to(observation.device)
        low, high = _bounds(spec, observation)
        unit = torch.rand(*batch, len(spec["action_low"]), generator=generator).to(observation.device)
        return low + (high - low) * unit

    return act


def navigation_heuristic(
    spec: dict, gain: float = 1.5, damping: float = 1.0, avoidance: float = 5.0
) -> Act:
    """Scripted expert for VMAS ``navigation``: each agent steers toward its own goal.

    With VMAS's default options a navigation observation is [position (2), velocity (2),
    position - own goal (2), lidar (12 rays from angle 0 counter-clockwise, each
    max_range - distance to the nearest agent; absent with ``collisions=False``)]; the
    ``observe_all_goals=True`` layout is not supported. The force is proportional to the goal
    offset, damped by the velocity, pushed away from what the lidar sees, clipped to the bounds.
    Defaults were tuned on 3 agents, 100 steps (return about 3.0; uniform random about -0.5).

    Example:
        >>> spec = {"discrete": False, "action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]}
        >>> obs = torch.zeros(1, 1, 6); obs[..., 4] = 2.0   # the goal is 2 to the left
        >>> navigation_heuristic(spec)(obs, None)[..., 0]   # full force toward it, clipped
        tensor([[-1.]])
    """
    if spec.get("discrete", False):
        raise ValueError("navigation_heuristic needs continuous actions (VMAS navigation)")

    def act(observation: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        velocity, offset, lidar = observation[..., 2:4], observation[..., 4:6], observation[..., 6:]
        force = -gain * offset - damping * velocity
        if lidar.shape[-1] > 0:
            rays = lidar.shape[-1]
            angles = torch.arange(rays, device=observation.device) * (2 * torch.pi / rays)
            directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [R, 2]
            force = force - avoidance * lidar @ directions
        low, high = _bounds(spec, observation)
        return torch.maximum(torch.minimum(force, high), low)

    return act


def noisy(
    policy: Act,
    noise_std: float,
    random_prob: float,
    spec: dict,
    generator: torch.Generator | None = None,
) -> Act:
    """``policy`` with exploration noise, for datasets of lower quality.

    Per step and per agent, with probability ``random_prob`` a uniform random action; otherwise
    the policy's action plus Gaussian noise of std ``noise_std`` x (high - low), clipped to the
    bounds (discrete actions get no Gaussian noise).

    Example:
        >>> spec = {"discrete": True, "n_actions": 3}
        >>> greedy = lambda obs, mask: torch.zeros(obs.shape[:2], dtype=torch.int64)
        >>> act = noisy(greedy, 0.0, 1.0, spec, torch.Generator().manual_seed(0))
        >>> act(torch.zeros(2, 2, 1), None).shape
        torch.Size([2, 2])
    """
    explore = uniform_random(spec, generator)

    def act(observation: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        action = policy(observation, mask)
        random_action = explore(observation, mask)
        pick = torch.rand(observation.shape[:-1], generator=generator).to(observation.device) < random_prob
        if spec["discrete"]:
            return torch.where(pick, random_action, action)
        low, high = _bounds(spec, observation)
        noise = torch.randn(action.shape, generator=generator).to(observation.device)
        action = torch.maximum(torch.minimum(action + noise_std * (high - low) * noise, high), low)
        return torch.where(pick.unsqueeze(-1), random_action, action)

    return act


def focus_fire_heuristic(spec: dict):
    """SMAX's scripted focus fire (``envs.smax.focus_fire``); where its choice is unavailable (a dead
    ally, a wall), the first available action instead, so datasets always pass the mask check."""
    from lightning_marl.envs.smax import focus_fire  # imports no jax

    def act(observation, mask):
        action = focus_fire(observation, mask)
        valid = mask.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        return torch.where(valid, action, mask.float().argmax(-1))

    return act
