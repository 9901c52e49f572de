"""pymarl / CFCQL episode-batch HDF5 files (SMAC): episode-major arrays with action masks.

Keys (T = episode_limit + 1 slots): ``obs`` [E, T, N, O], ``state`` [E, T, S], ``actions``
[E, T, N(, 1)], ``avail_actions`` [E, T, N, K], ``reward`` [E, T(, 1)], ``terminated`` [E, T(, 1)],
``filled`` [E, T(, 1)] marking real steps (all steps if absent); ``actions_onehot`` is ignored.
Step t of episode e is a transition when it is filled, t < T-1 (the last slot only holds the
final observation) and no earlier step terminated; its next step is slot t+1. The last step of
an episode that did not terminate is truncated (the time limit); where its next slot is not
filled, it repeats itself as its next step.

Example:
    >>> PyMARL.name
    'pymarl'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_marl.data.importers.common import (
    Imported,
    Importer,
    check_array,
    check_chosen_available,
    fix_empty_masks,
    make_transitions,
    require_h5py,
)
from lightning_marl.data.importers.omiga import split_name
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import DatasetError
from lightning_marl.registry import register

REQUIRED = ("obs", "state", "actions", "avail_actions", "reward", "terminated")


@register("importer", "pymarl")
class PyMARL(Importer):
    """pymarl/CFCQL episode-batch HDF5 (obs, state, actions, avail_actions, reward, terminated, filled).

    Example:
        >>> PyMARL.options
        {}
    """

    name = "pymarl"
    options: dict = {}

    def read(self, src: Path) -> Imported:
        raw = _read_keys(src)
        obs = check_array(raw["obs"], src, "obs", shape=(None, None, None, None))
        e, t, n, _ = obs.shape
        state = check_array(raw["state"], src, "state", shape=(e, t, None))
        actions = check_array(raw["actions"], src, "actions", kind="int")
        if actions.shape == (e, t, n, 1):
            actions = actions[..., 0]
        actions = check_array(actions, src, "actions", shape=(e, t, n), kind="int").astype(np.int64)
        avail = check_array(raw["avail_actions"], src, "avail_actions", shape=(e, t, n, None), kind="bool")
        reward = _per_step(src, raw, "reward", e, t, "float")
        terminated = _per_step(src, raw, "terminated", e, t, "bool")
        filled = _per_step(src, raw, "filled", e, t, "bool") if "filled" in raw else np.ones((e, t), bool)
        # a step starts a transition when filled, before the last slot (which only holds the final
        # observation) and after no terminated step of its episode
        ended_before = np.concatenate([np.zeros((e, 1), bool), np.cumsum(terminated, 1)[:, :-1] > 0], 1)
        slot = np.arange(t)[None, :].repeat(e, 0)
        valid = filled & ~ended_before & (slot < t - 1)
        shift = lambda a: np.concatenate([a[:, 1:], np.zeros((e, 1), bool)], 1)
        term = valid & terminated
        trunc = valid & ~terminated & ~shift(valid)
        nxt_slot = np.where(valid & (shift(filled) | terminated), np.minimum(slot + 1, t - 1), slot)
        ep, step = np.nonzero(valid)  # episode-major: rows of an episode stay consecutive
        if len(ep) == 0:
            raise DatasetError(f"{src}: no filled steps; expected 'filled' to mark at least one real step")
        nstep = nxt_slot[ep, step]
        check_chosen_available(src, actions[ep, step], avail[ep, step], "actions", "avail_actions")
        next_mask, patched = fix_empty_masks(avail[ep, nstep])
        td = make_transitions(
            src, obs=obs[ep, step], next_obs=obs[ep, nstep], state=state[ep, step], next_state=state[ep, nstep],
            action=actions[ep, step], action_mask=avail[ep, step], next_action_mask=next_mask,
            reward=reward[ep, step], terminated=term[ep, step], truncated=trunc[ep, step],
            episode=np.unique(ep, return_inverse=True)[1],
        )
        spec = TaskSpec(n_agents=n, obs_dim=obs.shape[3], state_dim=state.shape[2], discrete=True,
                        n_actions=avail.shape[3])
        task, quality = split_name(src.stem)
        return Imported(td, spec, {
            "env": {"name": None, "task": task, "params": {}}, "quality": quality,
            "team_reward_rule": "the shared team reward of the file (pymarl stores no per-agent rewards)",
            "source": {"format": "pymarl", "path": str(src), "episodes": e, "slots": t},
            "notes": ["a time-limit end repeats the last step as its next step (truncated)",
                      *([f"{patched} empty next-step action masks set to all-available"] if patched else [])],
        })


def _read_keys(src: Path) -> dict:
    h5py = require_h5py()
    if not src.is_file():
        raise DatasetError(f"{src}: expected a pymarl/CFCQL HDF5 file")
    try:
        with h5py.File(src, "r") as handle:
            raw = {}
            for key in REQUIRED + ("filled",):
                if key not in handle:
                    if key in REQUIRED:
                        raise DatasetError(
                            f"{src}: missing key {key!r}; a pymarl episode batch holds obs [E, T, N, O], state "
                            f"[E, T, S], actions [E, T, N, 1], avail_actions [E, T, N, K], reward [E, T, 1], "
                            f"terminated [E, T, 1] and filled [E, T, 1]. Keys found: {sorted(handle)}"
                        )
                    continue
                if not isinstance(handle[key], h5py.Dataset):
                    raise DatasetError(f"{src}: key {key!r} is a group, expected an array")
                raw[key] = handle[key][()]
    except OSError as error:
        raise DatasetError(f"cannot read {src} as HDF5 ({error}); the file is truncated or not HDF5") from None
    return raw


def _per_step(src, raw, key, e, t, kind) -> np.ndarray:
    array = check_array(raw[key], src, key, kind=kind)
    if array.shape == (e, t, 1):
        array = array[..., 0]
    return check_array(array, src, key, shape=(e, t), kind=kind)
