"""Minari (the single-agent dataset standard): export our datasets to it, import them (and others) back.

Minari has no multi-agent API; our data fit its single-agent API with Dict spaces keyed by agent:

    observation: Dict(observation: Dict(agent: Box(O)), state: Box(S)
                      [, agent_state: Dict(agent: Box(S'))] [, action_mask: Dict(agent: MultiBinary(K))])
    action:      Dict(agent: Box(low, high, (A,)))  or  Dict(agent: Discrete(K))

Actions are exported in the environment's units (the bounds of the task spec) and rescaled to
[-1, 1] on import. Minari stores one scalar reward per step: the team reward (per-agent rewards
are not exported). Our metadata (spec, reference returns, quality, env) goes into
``lightning_marl.json`` beside Minari's own files. A dataset is written with
``create_dataset_from_buffers`` into ``DST/<namespace>/<name>`` (DST plays the role of
MINARI_DATASETS_PATH), without any download; read it with
``MINARI_DATASETS_PATH=DST python -c "import minari; minari.load_dataset('<id>')"``.

Import also accepts a per-agent Dict layout (observation and action Dicts with the same agent
keys) and plain single-agent datasets (Box observations; Box or Discrete actions) as one agent.

Example:
    >>> default_dataset_id("navigation-expert")
    'lightning_marl/navigation-expert-v0'
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

from lightning_marl.data.importers.common import (
    FORMATS_EXTRA,
    Imported,
    Importer,
    check_array,
    check_chosen_available,
    fix_empty_masks,
    make_transitions,
    rescale_actions,
)
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import ConfigError, DatasetError
from lightning_marl.registry import register

SIDECAR = "lightning_marl.json"


def require_minari():
    try:
        import minari
    except ImportError:
        raise ConfigError(f"Minari import/export needs minari: {FORMATS_EXTRA}") from None
    return minari


def default_dataset_id(name: str) -> str:
    """A valid Minari id ``lightning_marl/<name>-v0`` from our dataset id."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-") or "dataset"
    return f"lightning_marl/{clean}-v0"


# ------------------------------------------------------------------------------------ export

def export_minari(src, dst, dataset_id: str | None = None, overwrite: bool = False) -> Path:
    """Write our dataset ``src`` as a Minari dataset under the root ``dst``; returns its directory."""
    minari = require_minari()
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    from lightning_marl.data import schema
    from lightning_marl.data.dataset import load_dataset

    ds = load_dataset(src)
    spec, td, meta = ds.spec, ds.transitions, ds.metadata
    dataset_id = dataset_id or default_dataset_id(ds.id)
    if not re.fullmatch(r"([\w-]+/)?[\w-]+-v\d+", dataset_id):
        raise ConfigError(f"Minari dataset id {dataset_id!r} must look like namespace/name-v0")
    target = Path(dst) / dataset_id
    if target.exists() and not overwrite:
        raise DatasetError(f"{target} already exists; pass --overwrite to replace it")
    names = spec.agent_names
    low, high = np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32)
    box = lambda shape: spaces.Box(-np.inf, np.inf, shape, np.float32)
    obs_space = {"observation": spaces.Dict({a: box((spec.obs_dim,)) for a in names}), "state": box((spec.state_dim,))}
    has_agent_state = schema.AGENT_STATE in td.keys(include_nested=True)
    if has_agent_state:
        obs_space["agent_state"] = spaces.Dict({a: box((spec.agent_state_dim,)) for a in names})
    if spec.discrete:
        obs_space["action_mask"] = spaces.Dict({a: spaces.MultiBinary(spec.n_actions) for a in names})
        act_space = spaces.Dict({a: spaces.Discrete(spec.n_actions) for a in names})
    else:
        act_space = spaces.Dict({a: spaces.Box(low, high, (spec.action_dim,), np.float32) for a in names})

    def cur_next(key, next_key, rows):
        now = td.get(key)[rows].numpy()
        return np.concatenate([now, td.get(next_key)[rows][-1:].numpy()])

    episode = td.get(schema.EPISODE).numpy()
    starts = np.flatnonzero(np.concatenate([[True], episode[1:] != episode[:-1]]))
    bounds = list(zip(starts, list(starts[1:]) + [len(episode)]))
    buffers = []
    for number, (a, b) in enumerate(bounds):
        rows = slice(a, b)
        per_agent = lambda key, next_key: {n: v for n, v in zip(names, np.moveaxis(cur_next(key, next_key, rows), 1, 0))}
        observations = {"observation": per_agent(schema.OBS, schema.NEXT_OBS),
                        "state": cur_next(schema.STATE, schema.NEXT_STATE, rows)}
        if has_agent_state:
            observations["agent_state"] = per_agent(schema.AGENT_STATE, schema.NEXT_AGENT_STATE)
        action = td.get(schema.ACTION)[rows].numpy()
        if spec.discrete:
            observations["action_mask"] = {n: m.astype(np.int8) for n, m in per_agent(schema.ACTION_MASK, schema.NEXT_ACTION_MASK).items()}
            actions = {n: action[:, i] for i, n in enumerate(names)}
        else:
            env_action = low + (action + 1.0) * (high - low) / 2
            actions = {n: env_action[:, i].astype(np.float32) for i, n in enumerate(names)}
        buffers.append(EpisodeBuffer(
            id=number, observations=observations, actions=actions,
            rewards=td.get(schema.REWARD)[rows, 0].numpy().astype(np.float64),
            terminations=td.get(schema.TERMINATED)[rows, 0].numpy(),
            truncations=td.get(schema.TRUNCATED)[rows, 0].numpy(), infos={},
        ))
    tmp_root = Path(dst).resolve().parent / f".{Path(dst).name}.minari-tmp-{uuid.uuid4().hex[:8]}"
    previous = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(tmp_root)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # author/code_permalink/env_spec recommendations
            minari.create_dataset_from_buffers(
                dataset_id, buffers, observation_space=spaces.Dict(obs_space), action_space=act_space,
                algorithm_name=(meta.get("generation") or {}).get("behaviour") or meta.get("quality") or "unknown",
                description=f"lightning_marl dataset {ds.id} (quality {meta.get('quality')}); multi-agent data in "
                            "Dict spaces keyed by agent; see lightning_marl.json",
            )
        made = tmp_root / dataset_id
        sidecar = {key: meta.get(key) for key in ("id", "env", "quality", "reference_returns", "team_reward_rule")}
        sidecar.update(spec=spec.to_dict(), format="lightning_marl.minari-export", checksum=ds.checksum)
        (made / SIDECAR).write_text(json.dumps(sidecar, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.rename(made, target)
        namespace_meta = tmp_root / dataset_id.split("/")[0] / "namespace_metadata.json"
        if "/" in dataset_id and namespace_meta.exists() and not (target.parent / namespace_meta.name).exists():
            shutil.copy(namespace_meta, target.parent / namespace_meta.name)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(tmp_root, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------ import

@register("importer", "minari")
class Minari(Importer):
    """Minari datasets: ours (Dict spaces keyed by agent), per-agent Dict layouts, or single-agent Box data.

    Example:
        >>> sorted(Minari.options)
        ['action_bounds']
    """

    name = "minari"
    options = {"action_bounds": "(low, high) of continuous actions (default: the action space's bounds)"}

    def read(self, src: Path, action_bounds=None) -> Imported:
        minari = require_minari()
        data_dir = src / "data" if (src / "data").is_dir() else src
        root = data_dir.parent
        if not (data_dir / "metadata.json").exists():
            raise DatasetError(f"{src}: not a Minari dataset (no data/metadata.json); expected DST/<namespace>/<name>-v0")
        try:
            ds = minari.MinariDataset(data_dir)
            obs_space, act_space = ds.observation_space, ds.action_space
            episodes = list(ds.iterate_episodes())
        except Exception as error:
            raise DatasetError(f"{src}: Minari cannot read this dataset ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200] if str(error) else ''}); it is corrupt") from None
        if not episodes:
            raise DatasetError(f"{src}: the Minari dataset holds no episodes")
        sidecar = {}
        if (root / SIDECAR).exists():
            try:
                sidecar = json.loads((root / SIDECAR).read_text())
            except ValueError as error:
                raise DatasetError(f"{root / SIDECAR} is not valid JSON ({error})") from None
        layout, names = _layout(src, obs_space, act_space)
        parts = [_episode(src, ep, layout, names, act_space, number) for number, ep in enumerate(episodes)]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if parts[0][k] is not None}
        discrete = layout["discrete"]
        extra = {}
        if discrete:
            check_chosen_available(src, cat["action"], cat["mask"], "actions", "observations/action_mask")
            next_mask, _ = fix_empty_masks(cat["next_mask"])
            extra = {"action_mask": cat["mask"], "next_action_mask": next_mask}
            action = cat["action"]
        else:
            bounds = action_bounds if action_bounds is not None else layout["bounds"]
            action, low, high = rescale_actions(cat["action"], src, "actions", bounds)
        if "agent_state" in cat:
            extra.update(agent_state=cat["agent_state"], next_agent_state=cat["next_agent_state"])
        td = make_transitions(src, obs=cat["obs"], next_obs=cat["next_obs"], state=cat["state"],
                              next_state=cat["next_state"], action=action, reward=cat["reward"],
                              terminated=cat["terminated"], truncated=cat["truncated"], episode=cat["episode"], **extra)
        n, o = cat["obs"].shape[1:]
        common = dict(n_agents=n, obs_dim=o, state_dim=cat["state"].shape[1], agent_names=names,
                      agent_state_dim=cat["agent_state"].shape[2] if "agent_state" in cat else 0)
        if discrete:
            spec = TaskSpec(discrete=True, n_actions=cat["mask"].shape[2], **common)
        else:
            spec = TaskSpec(discrete=False, action_dim=action.shape[2], action_low=low, action_high=high, **common)
        name = root.name
        return Imported(td, spec, {
            "env": sidecar.get("env") or {"name": None, "task": re.sub(r"-v\d+$", "", name), "params": {}},
            "quality": sidecar.get("quality"),
            "reference_returns": sidecar.get("reference_returns"),
            "team_reward_rule": sidecar.get("team_reward_rule") or "the Minari dataset's reward",
            "source": {"format": "minari", "path": str(root), "layout": layout["name"],
                       "dataset_id": ds.spec.dataset_id if hasattr(ds, "spec") else None},
            "notes": [f"Minari layout: {layout['name']}"],
        })


def _layout(src, obs_space, act_space):
    from gymnasium import spaces

    def action_info(space_list):
        if all(isinstance(s, spaces.Discrete) for s in space_list):
            return True, None
        if all(isinstance(s, spaces.Box) and len(s.shape) == 1 for s in space_list):
            low, high = space_list[0].low, space_list[0].high
            return False, ((low, high) if np.isfinite(low).all() and np.isfinite(high).all() else None)
        raise DatasetError(f"{src}: action spaces {space_list} are neither all Discrete nor all 1-d Box")

    if isinstance(obs_space, spaces.Dict) and isinstance(obs_space.spaces.get("observation"), spaces.Dict):
        names = list(obs_space["observation"].spaces)
        if not isinstance(act_space, spaces.Dict) or list(act_space.spaces) != names:
            raise DatasetError(f"{src}: action space {act_space} is not a Dict keyed by the agents {names}")
        discrete, bounds = action_info([act_space[a] for a in names])
        return {"name": "lightning_marl dict", "discrete": discrete, "bounds": bounds}, names
    if isinstance(obs_space, spaces.Dict) and isinstance(act_space, spaces.Dict) and list(obs_space.spaces) == list(act_space.spaces):
        names = list(obs_space.spaces)
        discrete, bounds = action_info([act_space[a] for a in names])
        return {"name": "per-agent dict", "discrete": discrete, "bounds": bounds}, names
    if isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 1:
        discrete, bounds = action_info([act_space])
        return {"name": "single agent", "discrete": discrete, "bounds": bounds}, ["agent_0"]
    raise DatasetError(
        f"{src}: observation space {obs_space} is not a layout lightning_marl reads: expected Dict(observation: "
        "Dict(agent: Box), state: Box, ...), a Dict of per-agent Boxes keyed like the actions, or a 1-d Box"
    )


def _episode(src, ep, layout, names, act_space, number) -> dict:
    where = f"{src} (episode {ep.id})"
    obs_raw, act_raw = ep.observations, ep.actions
    try:
        if layout["name"] == "single agent":
            obs = check_array(obs_raw, where, "observations", shape=(None, None))[:, None]
            action = np.asarray(act_raw)[:, None]
            state = obs[:, 0]
            agent_state = mask = None
        else:
            table = obs_raw["observation"] if layout["name"] == "lightning_marl dict" else obs_raw
            obs = np.stack([check_array(table[a], where, f"observations/{a}", shape=(None, None)) for a in names], 1)
            action = np.stack([np.asarray(act_raw[a]) for a in names], 1)
            if layout["name"] == "lightning_marl dict" and "state" in obs_raw:
                state = check_array(obs_raw["state"], where, "observations/state", shape=(len(obs), None))
            else:
                state = obs.reshape(len(obs), -1)
            agent_state = (np.stack([check_array(obs_raw["agent_state"][a], where, f"observations/agent_state/{a}",
                                                 shape=(len(obs), None)) for a in names], 1)
                           if layout["name"] == "lightning_marl dict" and "agent_state" in obs_raw else None)
            mask = (np.stack([check_array(obs_raw["action_mask"][a], where, f"observations/action_mask/{a}",
                                          shape=(len(obs), None), kind="bool") for a in names], 1)
                    if layout["name"] == "lightning_marl dict" and "action_mask" in obs_raw else None)
    except (KeyError, TypeError) as error:
        raise DatasetError(f"{where}: missing or malformed observation entry {error}") from None
    steps = len(obs) - 1
    if steps < 1:
        raise DatasetError(f"{where}: {len(obs)} observations, expected at least 2 (Minari stores T+1 per episode)")
    reward = check_array(ep.rewards, where, "rewards", shape=(steps,))
    terminated = check_array(ep.terminations, where, "terminations", shape=(steps,), kind="bool").copy()
    truncated = check_array(ep.truncations, where, "truncations", shape=(steps,), kind="bool").copy()
    truncated[-1] |= not terminated[-1]
    if layout["discrete"]:
        action = check_array(action, where, "actions", shape=(steps, len(names)), kind="int").astype(np.int64)
        if mask is None:
            k = int(act_space[names[0]].n if hasattr(act_space, "spaces") else act_space.n)
            mask = np.ones((steps + 1, len(names), k), bool)
    else:
        action = check_array(action, where, "actions", shape=(steps, len(names), None))
    return {
        "obs": obs[:-1], "next_obs": obs[1:], "state": state[:-1], "next_state": state[1:],
        "agent_state": None if agent_state is None else agent_state[:-1],
        "next_agent_state": None if agent_state is None else agent_state[1:],
        "mask": None if mask is None else mask[:-1], "next_mask": None if mask is None else mask[1:],
        "action": action, "reward": reward, "terminated": terminated, "truncated": truncated,
        "episode": np.full(steps, number, np.int64),
    }
