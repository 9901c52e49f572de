"""The dataset's next joint action a'_D of every transition, for in-sample methods such as ICQ.

The batch contract stores transitions, not trajectories, so a'_D is not in a batch; it lies in
the following row of the same episode. ``add_next_actions`` copies it into the key
``("next", "agents", "action")`` once, before training (rows of an episode must be stored
consecutively and in time order, as the collectors and importers write them).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from lightning_marl.data import schema
from lightning_marl.errors import DatasetError

NEXT_ACTION = schema.NEXT_ACTION


def add_next_actions(transitions: TensorDictBase) -> TensorDictBase:
    """A shallow copy of ``transitions`` [T] with ``("next", "agents", "action")`` added.

    Row t gets the action of row t + 1 when that row continues the same episode (same episode
    id and row t not done). Otherwise row t gets its OWN action:
      - terminated rows: any action will do, the target multiplies it by (1 - terminated) = 0;
      - truncated rows, and an episode's last stored row without a done flag: the next action is
        unknown (the episode was cut); the current action is a stand-in, so the bootstrap value
        Q̄_tot(s', a'_D) of these rows is an approximation.
    The input is not modified (a memory-mapped dataset stays read-only).

    Example:
        >>> from lightning_marl.collect.matrix import matrix_game_transitions
        >>> td, _ = matrix_game_transitions("climbing", [(0, 0), (1, 2)], [0.5, 0.5], n=4)
        >>> torch.equal(add_next_actions(td)["next", "agents", "action"], td["agents", "action"])  # all terminal
        True
    """
    if transitions.batch_dims != 1:
        raise DatasetError(f"add_next_actions expects transitions with one batch dimension, found {transitions.batch_size}")
    action = transitions.get(schema.ACTION)
    episode = transitions.get(schema.EPISODE)
    done = transitions.get(schema.DONE).reshape(-1)
    continues = torch.zeros_like(done)
    continues[:-1] = (episode[1:] == episode[:-1]) & ~done[:-1]
    following = torch.cat([action[1:], action[-1:]]) if len(action) else action
    shape = (-1,) + (1,) * (action.ndim - 1)
    next_action = torch.where(continues.reshape(shape), following, action)
    out = transitions.copy()
    out.set(NEXT_ACTION, next_action)
    return out
