"""OMIGA's datasets: MaMuJoCo HDF5 files (keys o, s, a, r, d) and the SMAC per-episode torch files.

HDF5 (one file per task and quality, e.g. ``Ant-v2-2x4-expert.hdf5``): ``o`` [N, n, O],
``s`` [N, n, S] per-agent state, ``a`` [N, n, A], ``r`` [N] / [N, 1] (team) or [N, n(, 1)]
(per agent), ``d`` [N] / [N, k] (column 0). A row with d = 1 is the terminal observation of
its episode: it starts no transition; the transition into it is terminated.

- Default: transitions t -> t+1 inside an episode. Episodes end at a terminal row, at a
  ``timeouts`` row if the file has that key, or after ``episode_length`` rows (the time limit,
  option ``--episode-length``). The last row of a truncated episode repeats itself as its next
  step (truncated: bootstrapping from it is an approximation).
- ``next_row_compat=True`` (``--omiga-next-row``) reproduces OMIGA's own loader exactly: keep row t
  where d[t] = 0 and t < N-1, next step row t+1, bootstrap mask 1 - d[t+1]. Time-limit ends
  without d = 1 then chain into the next episode's first row, as in the published results.

SMAC (a directory of files, one ``torch.save``'d episode each): per agent a list of steps
``[global_state, obs, action, reward, done, available_actions]``. Read with
``torch.load(weights_only=True)`` (numpy arrays allowed, nothing executed); ``allow_pickle=True``
(``--allow-pickle``) unpickles arbitrary objects and can run code from the file: use it only for
files you trust.

Example:
    >>> split_name("Ant-v2-2x4-expert")
    ('Ant-v2-2x4', 'expert')
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_marl.data.importers.common import (
    TEAM_REWARD_MEAN,
    Imported,
    Importer,
    check_array,
    check_chosen_available,
    check_rows,
    episodes_from_ends,
    fix_empty_masks,
    make_transitions,
    next_rows_flat,
    require_h5py,
    rescale_actions,
    state_from_agents,
)
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import DatasetError
from lightning_marl.registry import register

QUALITIES = ("expert", "medium-replay", "medium-expert", "medium", "random", "good", "poor")


def split_name(stem: str) -> tuple[str, str | None]:
    """``Ant-v2-2x4-expert`` -> (``Ant-v2-2x4``, ``expert``); no known quality suffix -> (stem, None)."""
    for quality in QUALITIES:
        for sep in ("-", "_"):
            if stem.endswith(sep + quality):
                return stem[: -len(quality) - 1], quality
    return stem, None


@register("importer", "omiga")
class OMIGA(Importer):
    """OMIGA's MaMuJoCo HDF5 files (o, s, a, r, d) and SMAC per-episode torch files.

    Example:
        >>> sorted(OMIGA.options)
        ['action_bounds', 'allow_pickle', 'episode_length', 'next_row_compat']
    """

    name = "omiga"
    options = {
        "next_row_compat": "reproduce OMIGA's next-row convention (time-limit ends chain into the next episode)",
        "episode_length": "time limit in rows: split episodes that end without d = 1 (HDF5)",
        "action_bounds": "(low, high) of the environment's actions, to rescale them to [-1, 1]",
        "allow_pickle": "SMAC torch files: unpickle arbitrary objects (runs code from the file; trusted files only)",
    }

    def read(self, src: Path, next_row_compat=False, episode_length=None, action_bounds=None, allow_pickle=False):
        if src.is_dir():
            return read_smac_episodes(src, allow_pickle=allow_pickle)
        return read_hdf5(src, next_row_compat, episode_length, action_bounds)


def read_hdf5(file: Path, next_row_compat=False, episode_length=None, action_bounds=None) -> Imported:
    h5py = require_h5py()
    try:
        with h5py.File(file, "r") as handle:
            raw = {}
            for key in ("o", "s", "a", "r", "d", "timeouts"):
                if key in handle:
                    if not isinstance(handle[key], h5py.Dataset):
                        raise DatasetError(f"{file}: key {key!r} is a group, expected an array")
                    raw[key] = handle[key][()]
                elif key != "timeouts":
                    raise DatasetError(
                        f"{file}: missing key {key!r}; an OMIGA HDF5 file holds o [N, n_agents, obs], "
                        f"s [N, n_agents, state], a [N, n_agents, act], r [N, 1], d [N, 1]. Keys found: {sorted(handle)}"
                    )
    except OSError as error:
        raise DatasetError(f"cannot read {file} as HDF5 ({error}); the file is truncated or not HDF5") from None
    obs = check_array(raw["o"], file, "o", shape=(None, None, None))
    rows, n = obs.shape[0], obs.shape[1]
    agent_state = check_array(raw["s"], file, "s", shape=(rows, n, None))
    action = check_array(raw["a"], file, "a", shape=(rows, n, None))
    reward = check_array(raw["r"], file, "r")
    d = check_array(raw["d"], file, "d", kind="bool")
    check_rows(file, {"o": obs, "s": agent_state, "a": action, "r": reward, "d": d})
    if d.ndim not in (1, 2):
        raise DatasetError(f"{file}: key 'd' has shape {list(d.shape)}, expected [N] or [N, k] (column 0 is used)")
    d = d.reshape(rows, -1)[:, 0]
    agent_reward = None
    if reward.size == rows:
        team = reward.reshape(rows)
    elif reward.size == rows * n:
        agent_reward = reward.reshape(rows, n)
        team = agent_reward.mean(1)
    else:
        raise DatasetError(f"{file}: key 'r' has shape {list(reward.shape)}, expected [{rows}, 1] or [{rows}, {n}]")
    if rows < 2:
        raise DatasetError(f"{file}: {rows} rows, expected at least 2 (transitions pair consecutive rows)")
    action, low, high = rescale_actions(action, file, "a", action_bounds)
    notes = []
    if next_row_compat:
        keep = np.flatnonzero(~d[:-1])
        nxt = keep + 1
        terminated, truncated = d[nxt], np.zeros(len(keep), bool)
        episode = episodes_from_ends(terminated)
        notes.append("OMIGA next-row convention (--omiga-next-row): rows with d=0 except the last; next step is "
                     "the next row, mask 1 - d[t+1]; time-limit ends chain into the next episode")
    else:
        keep, nxt, terminated, truncated, episode = _split_default(file, d, raw.get("timeouts"), episode_length)
        notes.append("episodes split at terminal rows (d=1, a terminal observation that starts no transition)"
                     + (", at timeouts" if raw.get("timeouts") is not None else "")
                     + (f", and every {episode_length} rows (time limit)" if episode_length else
                        "; without --episode-length a time-limit end not marked in the file cannot be detected"))
    state = state_from_agents(agent_state)
    td = make_transitions(
        file, obs=obs[keep], next_obs=obs[nxt], state=state[keep], next_state=state[nxt],
        agent_state=agent_state[keep], next_agent_state=agent_state[nxt],
        action=action[keep], reward=team[keep], agent_reward=None if agent_reward is None else agent_reward[keep],
        terminated=terminated, truncated=truncated, episode=episode,
    )
    spec = TaskSpec(n_agents=n, obs_dim=obs.shape[2], state_dim=state.shape[1], discrete=False,
                    action_dim=action.shape[2], agent_state_dim=agent_state.shape[2], action_low=low, action_high=high)
    task, quality = split_name(file.stem)
    return Imported(td, spec, {
        "env": {"name": None, "task": task, "params": {}}, "quality": quality,
        "team_reward_rule": "the file's team reward r" if agent_reward is None else TEAM_REWARD_MEAN,
        "source": {"format": "omiga", "path": str(file), "rows": rows, "next_row_compat": bool(next_row_compat)},
        "notes": notes,
    })


def _split_default(file, d, timeouts, episode_length):
    """Rows that start transitions, their next rows, flags and episode ids (terminal rows start none)."""
    rows = len(d)
    cut = np.zeros(rows, bool)  # row t is the last row of a truncated episode
    if timeouts is not None:
        cut |= check_array(timeouts, file, "timeouts", kind="bool").reshape(rows, -1)[:, 0]
    if episode_length:
        if int(episode_length) < 1:
            raise DatasetError(f"episode_length must be >= 1, got {episode_length}")
        step = 0
        for t in range(rows):  # a counter reset by terminal rows: one pass of plain integers
            if d[t]:
                step = 0
                continue
            step += 1
            at_limit = step >= episode_length and not (t + 1 < rows and d[t + 1])  # a terminal row wins
            if at_limit or cut[t]:
                cut[t], step = True, 0
    start = ~d
    nxt = np.minimum(np.arange(rows) + 1, rows - 1)
    last = np.zeros(rows, bool)
    last[-1] = True
    terminated = start & ~cut & ~last & d[nxt]
    truncated = start & (cut | last)
    nxt = np.where(truncated, np.arange(rows), nxt)
    ends = terminated | truncated
    keep = np.flatnonzero(start)
    return keep, nxt[keep], terminated[keep], truncated[keep], episodes_from_ends(ends[keep])


# ------------------------------------------------------------------------------------- SMAC

def _torch_load(file: Path, allow_pickle: bool):
    import torch

    if allow_pickle:
        return torch.load(file, map_location="cpu", weights_only=False)
    from numpy.core.multiarray import _reconstruct, scalar

    allowed = [_reconstruct, scalar, np.ndarray, np.dtype] + [type(np.dtype(c)) for c in "?bBhHiIlLqQefdg"]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DatasetError(
            f"{file}: cannot be read safely with torch.load(weights_only=True) ({str(error).splitlines()[0]}). "
            "If you trust this file and its author, pass --allow-pickle (it can run code stored in the file)"
        ) from None


def read_smac_episodes(folder: Path, allow_pickle=False) -> Imported:
    """A folder of OMIGA SMAC episodes (one torch-saved file each) as one dataset."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{folder}: no episode files; expected one torch-saved episode per file")
    parts = []
    for number, file in enumerate(files):
        parts.append(_smac_episode(file, _torch_load(file, allow_pickle), number))
    dims = {(p["obs"].shape[1:], p["state"].shape[1:], p["mask"].shape[1:]) for p in parts}
    if len(dims) != 1:
        raise DatasetError(f"{folder}: episodes disagree on agents/observation/state/action sizes: {sorted(map(str, dims))}")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    terminated, truncated = cat["terminated"], cat["truncated"]
    nxt, terminated, truncated = next_rows_flat(terminated, truncated)
    mask = cat["mask"]
    next_mask, patched = fix_empty_masks(mask[nxt])
    check_chosen_available(folder, cat["action"], mask, "action", "available_actions")
    td = make_transitions(
        folder, obs=cat["obs"], next_obs=cat["obs"][nxt], state=cat["state"], next_state=cat["state"][nxt],
        action=cat["action"], action_mask=mask, next_action_mask=next_mask, reward=cat["agent_reward"].mean(1),
        agent_reward=cat["agent_reward"], terminated=terminated, truncated=truncated, episode=cat["episode"],
    )
    n, o = cat["obs"].shape[1:]
    spec = TaskSpec(n_agents=n, obs_dim=o, state_dim=cat["state"].shape[1], discrete=True, n_actions=mask.shape[-1])
    task, quality = split_name(folder.name)
    return Imported(td, spec, {
        "env": {"name": None, "task": task, "params": {}}, "quality": quality,
        "team_reward_rule": TEAM_REWARD_MEAN,
        "source": {"format": "omiga", "layout": "smac torch episodes", "path": str(folder), "files": len(files),
                   "allow_pickle": bool(allow_pickle)},
        "notes": ["the last step of an episode repeats itself as its next step (terminated if its done flag is set, "
                  "else truncated)", *([f"{patched} empty next-step action masks set to all-available"] if patched else [])],
    })


def _smac_episode(file, episode, number) -> dict:
    if not isinstance(episode, (list, tuple)) or not episode or not all(isinstance(a, (list, tuple)) for a in episode):
        raise DatasetError(f"{file}: expected a list (one entry per agent) of lists of steps, found {type(episode).__name__}")
    length = len(episode[0])
    if length == 0 or any(len(agent) != length for agent in episode):
        raise DatasetError(f"{file}: agents have {[len(a) for a in episode]} steps, expected the same non-zero number")
    fields = {}
    for j, name in enumerate(("state", "obs", "action", "reward", "done", "available_actions")):
        try:
            values = [[_as_array(agent[t][j]) for agent in episode] for t in range(length)]
            fields[name] = np.asarray(values)
        except (IndexError, TypeError, ValueError) as error:
            raise DatasetError(
                f"{file}: step field {j} ({name}) cannot be read ({error}); expected per agent a list of steps "
                "[global_state, obs, action, reward, done, available_actions]"
            ) from None
    n = len(episode)
    obs = check_array(fields["obs"], file, "obs", shape=(length, n, None))
    state = check_array(fields["state"], file, "global_state", shape=(length, n, None))
    action = check_array(fields["action"].reshape(length, n, -1), file, "action", shape=(length, n, 1), kind="int")[..., 0]
    reward = check_array(fields["reward"].reshape(length, n, -1), file, "reward", shape=(length, n, 1))[..., 0]
    done = check_array(fields["done"].reshape(length, n, -1), file, "done", shape=(length, n, 1), kind="bool")[..., 0]
    mask = check_array(fields["available_actions"], file, "available_actions", shape=(length, n, None), kind="bool")
    terminated = np.zeros(length, bool)
    terminated[-1] = done[-1].all()
    truncated = np.zeros(length, bool)
    truncated[-1] = not terminated[-1]
    return {"obs": obs, "state": state_from_agents(state), "action": action.astype(np.int64), "agent_reward": reward,
            "mask": mask, "terminated": terminated, "truncated": truncated, "episode": np.full(length, number)}


def _as_array(value):
    if hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64) if not isinstance(value, np.ndarray) or value.dtype != bool else value

