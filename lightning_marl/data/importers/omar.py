"""OMAR's per-agent numpy arrays (MPE, 2-agent HalfCheetah).

A directory per task/quality/seed (e.g. ``simple_spread/expert/seed_0_data``) holds for each agent
i: ``obs_i.npy`` [T, O_i], ``acs_i.npy`` [T, A], ``rews_i.npy`` [T(, 1)], ``next_obs_i.npy``
[T, O_i], ``dones_i.npy`` [T(, 1)], and on MaMuJoCo ``states_i.npy``/``next_states_i.npy``
[T, S]. Arrays load with ``allow_pickle=False``. Agents with smaller observations are padded with
zeros to the largest (the sizes are recorded in ``source.agent_obs_dims``). Without states the
global state is the concatenation of the agents' observations.

Episodes end where all agents are done (terminated) or where the next observation of a row is
not the observation of the following row (a time-limit end, truncated). In predator-prey and
world tasks only the predators learn: pick them with ``agents`` (``--agents 0,1,2``).

Example:
    >>> sorted(OMAR.options)
    ['action_bounds', 'agents']
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lightning_marl.data.importers.common import (
    TEAM_REWARD_MEAN,
    Imported,
    Importer,
    check_array,
    check_rows,
    episodes_from_ends,
    make_transitions,
    rescale_actions,
    state_from_agents,
)
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import DatasetError
from lightning_marl.registry import register

FIELDS = ("obs", "acs", "rews", "next_obs", "dones")


@register("importer", "omar")
class OMAR(Importer):
    """OMAR's per-agent numpy arrays (obs_i, acs_i, rews_i, next_obs_i, dones_i[, states_i]).

    Example:
        >>> OMAR.name
        'omar'
    """

    name = "omar"
    options = {
        "agents": "indices of the agents to import (default: every agent found), e.g. the predators",
        "action_bounds": "(low, high) of the environment's actions, to rescale them to [-1, 1]",
    }

    def read(self, src: Path, agents=None, action_bounds=None) -> Imported:
        if not src.is_dir():
            raise DatasetError(f"{src}: expected a directory of per-agent arrays (obs_0.npy, acs_0.npy, ...)")
        pattern = r"(?:next_)?(?:obs|acs|rews|dones|states)_(\d+)\.npy"
        found = sorted({int(m.group(1)) for p in src.iterdir() if (m := re.fullmatch(pattern, p.name))})
        if not found:
            raise DatasetError(f"{src}: no obs_<i>.npy files; expected obs_i, acs_i, rews_i, next_obs_i, dones_i per agent i")
        agents = list(found if agents is None else agents)
        missing = [i for i in agents if i not in found]
        if missing or not agents:
            raise DatasetError(f"{src}: agents {missing or agents} have no arrays (agents found: {found})")
        has_states = any((src / f"states_{i}.npy").exists() for i in found)
        per_agent = [self._agent_arrays(src, i, has_states) for i in agents]
        rows = check_rows(src, {f"obs_{i}.npy": a["obs"] for i, a in zip(agents, per_agent)})
        obs_dims = [a["obs"].shape[1] for a in per_agent]
        act_dims = {a["acs"].shape[1] for a in per_agent}
        if len(act_dims) != 1:
            raise DatasetError(f"{src}: agents have action sizes {sorted(act_dims)}, expected one size for all")
        width = max(obs_dims)
        pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))
        obs = np.stack([pad(a["obs"]) for a in per_agent], 1)
        next_obs = np.stack([pad(a["next_obs"]) for a in per_agent], 1)
        action, low, high = rescale_actions(np.stack([a["acs"] for a in per_agent], 1), src / f"acs_{agents[0]}.npy",
                                            "acs", action_bounds)
        agent_reward = np.stack([a["rews"] for a in per_agent], 1)
        terminated = np.stack([a["dones"] for a in per_agent], 1).all(1)
        if has_states:
            state = state_from_agents(np.stack([a["states"] for a in per_agent], 1))
            next_state = state_from_agents(np.stack([a["next_states"] for a in per_agent], 1))
        else:
            state = np.concatenate([a["obs"] for a in per_agent], 1)
            next_state = np.concatenate([a["next_obs"] for a in per_agent], 1)
        continues = np.zeros(rows, bool)
        continues[:-1] = np.isclose(next_obs[:-1], obs[1:], rtol=0, atol=1e-6).all((1, 2))
        truncated = ~terminated & ~continues
        td = make_transitions(
            src, obs=obs, next_obs=next_obs, state=state, next_state=next_state, action=action,
            reward=agent_reward.mean(1), agent_reward=agent_reward, terminated=terminated, truncated=truncated,
            episode=episodes_from_ends(terminated | truncated),
        )
        spec = TaskSpec(n_agents=len(agents), obs_dim=width, state_dim=state.shape[1], discrete=False,
                        action_dim=action.shape[2], action_low=low, action_high=high,
                        agent_names=[f"agent_{i}" for i in agents])
        task, quality = _task_quality(src)
        return Imported(td, spec, {
            "env": {"name": None, "task": task, "params": {}}, "quality": quality,
            "team_reward_rule": TEAM_REWARD_MEAN,
            "source": {"format": "omar", "path": str(src), "agents": agents, "agent_obs_dims": obs_dims},
            "notes": ["episodes end where all agents are done (terminated) or where next_obs differs from the "
                      "following row's obs (truncated)"]
                     + ([f"observations zero-padded to {width} (sizes {obs_dims})"] if len(set(obs_dims)) > 1 else []),
        })

    @staticmethod
    def _agent_arrays(src: Path, i: int, has_states: bool) -> dict:
        names = FIELDS + (("states", "next_states") if has_states else ())
        arrays = {}
        for name in names:
            file = src / f"{name}_{i}.npy"
            if not file.exists():
                raise DatasetError(f"{src}: missing {file.name}; expected {', '.join(f'{n}_{i}.npy' for n in names)}")
            try:
                raw = np.load(file, allow_pickle=False)
            except ValueError as error:  # object arrays need pickle: refused
                raise DatasetError(f"{file}: cannot be read without unpickling ({error}); expected a numeric array") from None
            except (OSError, EOFError) as error:
                raise DatasetError(f"{file}: not a readable .npy file ({error}); the file is truncated or corrupt") from None
            if name in ("rews", "dones"):
                raw = check_array(raw, file, name, kind="bool" if name == "dones" else "float")
                if raw.ndim == 2 and raw.shape[1] == 1:
                    raw = raw[:, 0]
                arrays[name] = check_array(raw, file, name, shape=(None,), kind="bool" if name == "dones" else "float")
            else:
                arrays[name] = check_array(raw, file, name, shape=(None, None))
        check_rows(src, {f"{n}_{i}.npy": a for n, a in arrays.items()})
        for a, b in (("obs", "next_obs"), ("states", "next_states")):
            if a in arrays and arrays[a].shape != arrays[b].shape:
                raise DatasetError(f"{src}: {b}_{i}.npy has shape {list(arrays[b].shape)}, expected {list(arrays[a].shape)} like {a}_{i}.npy")
        return arrays


def _task_quality(src: Path) -> tuple[str | None, str | None]:
    """``.../simple_spread/expert/seed_0_data`` -> (``simple_spread``, ``expert``)."""
    parts = src.resolve().parts
    if re.fullmatch(r"seed_\d+_data", parts[-1]) and len(parts) >= 3:
        return parts[-3], parts[-2]
    return parts[-1], None
