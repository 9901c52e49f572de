"""Small files in each published layout, written from known episodes (never downloaded).

``make_episodes`` draws episodes with known observations, actions, rewards and ends; each
``write_*`` stores them in one foreign layout, so a converter's output can be compared with the
episodes it came from.
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import numpy as np
import torch

N, OD, S, A, K = 2, 3, 4, 2, 3  # agents, obs, state, action sizes, discrete actions


def make_episodes(seed=0, lengths=(4, 3, 4, 2), terminated=(False, True, False, True), discrete=False):
    """Episodes: obs [L+1, N, O] (final observation included), state [L+1, S], action, reward [L, N]."""
    rng = np.random.default_rng(seed)
    episodes = []
    for length, term in zip(lengths, terminated):
        mask = rng.random((length + 1, N, K)) < 0.7
        mask[..., 0] = True
        if discrete:
            action = np.stack([[rng.choice(np.flatnonzero(mask[t, i])) for i in range(N)] for t in range(length)])
        else:
            action = rng.uniform(-1, 1, (length, N, A)).astype(np.float32)
        episodes.append({
            "obs": rng.normal(size=(length + 1, N, OD)).astype(np.float32),
            "state": rng.normal(size=(length + 1, S)).astype(np.float32),
            "action": action, "mask": mask,
            "reward": rng.normal(size=(length, 1)).repeat(N, 1).astype(np.float32),  # shared team reward
            "terminated": term, "length": length,
        })
    return episodes


def flat(episodes, key, steps_only=True):
    """One array of all steps: obs[:L] of every episode (or everything when steps_only is False)."""
    return np.concatenate([ep[key][: ep["length"]] if steps_only else ep[key] for ep in episodes])


def omiga_arrays(episodes) -> dict:
    """OMIGA layout: a terminal row (d = 1) after each terminated episode, none after a time-limit end."""
    rows = {"o": [], "s": [], "a": [], "r": [], "d": []}
    for ep in episodes:
        length = ep["length"]
        ends = length + 1 if ep["terminated"] else length
        for t in range(ends):
            rows["o"].append(ep["obs"][t])
            rows["s"].append(np.repeat(ep["state"][t][None], N, 0))
            rows["a"].append(ep["action"][t] if t < length else np.zeros((N, A), np.float32))
            rows["r"].append([ep["reward"][t, 0] if t < length else 0.0])
            rows["d"].append([1.0 if t == length else 0.0])
    return {k: np.asarray(v, np.float32) for k, v in rows.items()}


def write_h5(path: Path, arrays: dict) -> Path:
    """Each entry of ``arrays`` as a top-level HDF5 dataset (None entries are left out)."""
    import h5py

    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            if value is not None:
                handle[key] = value
    return path


def write_omiga_hdf5(path: Path, episodes, **overrides) -> Path:
    return write_h5(path, {**omiga_arrays(episodes), **overrides})


# A step as a named tuple: harmless, but a class that weights_only loading does not allow
Step = namedtuple("Step", "state obs action reward done available_actions")


def write_smac_episodes(folder: Path, episodes, step_type=list) -> Path:
    """OMIGA SMAC layout: one torch-saved file per episode, per agent a list of steps."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, ep in enumerate(episodes):
        length = ep["length"]
        agents = []
        for i in range(N):
            steps = []
            for t in range(length):
                done = bool(ep["terminated"] and t == length - 1)
                steps.append(step_type([ep["state"][t], ep["obs"][t, i], [int(ep["action"][t, i])],
                                        np.array([ep["reward"][t, i]], np.float32), done,
                                        ep["mask"][t, i].astype(np.float32)]))
            agents.append(steps)
        torch.save(agents, folder / f"episode_{number:03d}.pt")
    return folder


def omar_arrays(episodes, with_states=False) -> dict:
    """OMAR layout: file name -> array, per agent obs_i, acs_i, rews_i, next_obs_i, dones_i."""
    obs = flat(episodes, "obs")
    next_obs = np.concatenate([ep["obs"][1:] for ep in episodes])
    done = np.concatenate([[ep["terminated"] and t == ep["length"] - 1 for t in range(ep["length"])] for ep in episodes])
    out = {}
    for i in range(N):
        out[f"obs_{i}.npy"] = obs[:, i]
        out[f"next_obs_{i}.npy"] = next_obs[:, i]
        out[f"acs_{i}.npy"] = flat(episodes, "action")[:, i]
        out[f"rews_{i}.npy"] = flat(episodes, "reward")[:, i:i + 1]
        out[f"dones_{i}.npy"] = done[:, None].astype(np.float32)
        if with_states:
            out[f"states_{i}.npy"] = flat(episodes, "state")
            out[f"next_states_{i}.npy"] = np.concatenate([ep["state"][1:] for ep in episodes])
    return out


def write_npys(folder: Path, arrays: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        if value is not None:
            np.save(folder / name, value, allow_pickle=value.dtype == object)
    return folder


def write_omar(folder: Path, episodes, with_states=False) -> Path:
    return write_npys(folder, omar_arrays(episodes, with_states))


def pymarl_arrays(episodes, limit=None) -> dict:
    """pymarl EpisodeBatch arrays [E, limit + 1, ...]; the final observation sits in slot L (filled)."""
    limit = limit or max(ep["length"] for ep in episodes)
    e, t = len(episodes), limit + 1
    out = {
        "obs": np.zeros((e, t, N, OD), np.float32), "state": np.zeros((e, t, S), np.float32),
        "actions": np.zeros((e, t, N, 1), np.int64), "avail_actions": np.zeros((e, t, N, K), np.int32),
        "reward": np.zeros((e, t, 1), np.float32), "terminated": np.zeros((e, t, 1), np.uint8),
        "filled": np.zeros((e, t, 1), np.uint8),
    }
    for j, ep in enumerate(episodes):
        length = ep["length"]
        out["obs"][j, : length + 1] = ep["obs"]
        out["state"][j, : length + 1] = ep["state"]
        out["avail_actions"][j, : length + 1] = ep["mask"]
        out["actions"][j, :length, :, 0] = ep["action"]
        out["reward"][j, :length, 0] = ep["reward"][:, 0]
        out["terminated"][j, length - 1, 0] = ep["terminated"]
        out["filled"][j, : length + 1, 0] = 1
    return out


def write_pymarl(path: Path, episodes, **overrides) -> Path:
    return write_h5(path, {**pymarl_arrays(episodes), **overrides})


def vault_arrays(episodes, discrete=True) -> dict:
    """OG-MARL experience [1, T, ...]: rows are steps; the final observation is not stored."""
    ends = lambda flag: np.concatenate([[flag(ep) and t == ep["length"] - 1 for t in range(ep["length"])] for ep in episodes])
    term = ends(lambda ep: ep["terminated"])
    trunc = ends(lambda ep: not ep["terminated"])
    out = {
        "observations": flat(episodes, "obs"), "actions": flat(episodes, "action").astype(np.int32 if discrete else np.float32),
        "rewards": flat(episodes, "reward"), "terminals": np.repeat(term[:, None], N, 1),
        "truncations": np.repeat(trunc[:, None], N, 1),
        "infos": {"state": flat(episodes, "state"), **({"legals": flat(episodes, "mask")} if discrete else {})},
    }
    return out


def write_vault(rel_dir: Path, name: str, uid: str, arrays: dict) -> Path:
    """A flashbax vault holding ``arrays`` (leading axis T; written as [1, T, ...])."""
    import jax
    import jax.numpy as jnp
    from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
    from flashbax.vault import Vault

    t = len(jax.tree.leaves(arrays)[0])
    # a buffer state built directly (no jit-compiled buffer.add): [1, 2T, ...] with the first T rows written
    experience = jax.tree.map(lambda x: jnp.asarray(np.concatenate([x, np.zeros_like(x)]))[None], arrays)
    state = TrajectoryBufferState(experience=experience, current_index=jnp.asarray(t), is_full=jnp.asarray(False))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        Vault(vault_name=name, experience_structure=state.experience, rel_dir=str(rel_dir), vault_uid=uid).write(state)
    return rel_dir / name / uid
