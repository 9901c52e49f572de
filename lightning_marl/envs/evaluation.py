"""Batched evaluation rollouts of a decentralised policy."""

from __future__ import annotations

from typing import Callable

import torch
from torchrl.envs import EnvBase

Act = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@torch.no_grad()
def rollout_returns(env: EnvBase, act: Act, episodes: int, seed: int = 0,
                    reset: Callable[["torch.Tensor | None"], None] | None = None) -> dict:
    """Team returns of ``episodes`` episodes of ``act`` in a batched env from ``make_env``.

    ``act(observation [E, N, O], mask [E, N, K] | None)`` returns int64 indices [E, N] or float
    actions [E, N, A] in the env's bounds. Finished envs reset on their own. Env ``j`` reports
    its first episodes, in the order (episode k, env j) -> k * E + j, so long episodes are not
    crowded out by short ones. The env is re-seeded with ``seed``; ``act`` owns its randomness.
    Recurrent policies: ``reset(done)`` is called with None before the first step and with the
    envs that finished [E] after every step (default: the ``reset_hidden`` of the object whose bound
    method ``act`` is, e.g. ``Policy(module).act``), so hidden states restart with each episode.

    Example:
        >>> from lightning_marl.envs import make_env
        >>> env = make_env("matrix", "climbing", num_envs=4)
        >>> act = lambda obs, mask: torch.zeros(obs.shape[:2], dtype=torch.int64)
        >>> rollout_returns(env, act, episodes=6)["mean"]
        11.0
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n_envs = env.batch_size[0]
    wanted = (episodes - torch.arange(n_envs) + n_envs - 1).div(n_envs, rounding_mode="floor").clamp(min=0)
    returns = torch.zeros(n_envs, int(wanted.max()), dtype=torch.float64)
    won = torch.zeros_like(returns, dtype=torch.bool)
    count = torch.zeros(n_envs, dtype=torch.int64)
    running = torch.zeros(n_envs, dtype=torch.float64)
    has_won = False

    if reset is None:
        reset = getattr(getattr(act, "__self__", None), "reset_hidden", None)
    env.set_seed(seed)
    td = env.reset()
    if reset is not None:
        reset(None)
    while (count < wanted).any():
        td["agents", "action"] = act(td["agents", "observation"], td.get(("agents", "action_mask"), None))
        td, next_td = env.step_and_maybe_reset(td)
        running += td["next", "reward"].reshape(n_envs).cpu().double()
        done = td["next", "done"].reshape(n_envs).cpu()
        record = (done & (count < wanted)).nonzero().squeeze(-1)
        returns[record, count[record]] = running[record]
        if ("next", "won") in td.keys(include_nested=True):
            has_won = True
            won[record, count[record]] = td["next", "won"].reshape(n_envs).cpu()[record]
        count += done.long()
        if reset is not None and bool(done.any()):
            reset(done)
        running[done] = 0.0
        td = next_td

    # Column-major flattening puts episode (k, j) at k * E + j: the first `episodes` are the wanted ones.
    flat = returns.T.reshape(-1)[:episodes]
    return {
        "returns": flat.tolist(),
        "mean": flat.mean().item(),
        "std": flat.std(unbiased=False).item(),
        "episodes": episodes,
        "win_rate": won.T.reshape(-1)[:episodes].float().mean().item() if has_won else None,
    }
