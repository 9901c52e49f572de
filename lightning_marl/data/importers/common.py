"""What every importer shares: array checks, transition assembly, reference returns, ``convert``.

An importer is a class registered under the kind "importer" with a ``read(src, **options)``
method that returns an :class:`Imported` (transitions following the batch contract, the task
spec and metadata). :func:`convert` looks the importer up, fills the reference returns (flags,
else the shipped table of published values, else null) and writes the dataset atomically with
:func:`lightning_marl.data.dataset.write_dataset`.

Every problem with a foreign file is a DatasetError naming the file, the key and what was
expected; a missing optional dependency is a ConfigError naming the extra to install.

Example:
    >>> import numpy as np
    >>> check_array(np.zeros((4, 2, 3), np.float32), "f.h5", "o", shape=(None, 2, None)).shape
    (4, 2, 3)
    >>> check_array(np.zeros((4, 3)), "f.h5", "o", shape=(None, 2, None))
    Traceback (most recent call last):
    ...
    lightning_marl.errors.DatasetError: f.h5: key 'o' has shape [4, 3], expected [T, 2, *] (3 dimensions)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import ConfigError, DatasetError

PUBLISHED_TABLE = Path(__file__).with_name("published_references.json")
FORMATS_EXTRA = 'pip install "lightning_marl[formats]"'
SMAX_EXTRA = 'pip install "lightning_marl[smax]"'
TEAM_REWARD_MEAN = "mean of the per-agent rewards the source file gives"


@dataclass
class Imported:
    """What an importer read: transitions [T] following the batch contract, the spec, metadata.

    ``metadata`` holds at least ``env`` ({name, task, params}), ``quality``, ``team_reward_rule``
    and ``source`` ({format, path, ...}); ``notes`` lists the conventions applied.
    """

    transitions: TensorDict
    spec: TaskSpec
    metadata: dict = field(default_factory=dict)


class Importer:
    """Base class of the readers of foreign dataset formats.

    Subclasses set ``options`` (option name -> help) and implement ``read(src, **options)``.

    Example:
        >>> Importer().check_options({"allow_pickle": True})
        Traceback (most recent call last):
        ...
        lightning_marl.errors.ConfigError: the importer 'base' takes no option 'allow_pickle'; it takes: none
    """

    name = "base"
    options: dict = {}

    def check_options(self, options: dict) -> None:
        for key in options:
            if key not in self.options:
                accepted = ", ".join(sorted(self.options)) or "none"
                raise ConfigError(f"the importer {self.name!r} takes no option {key!r}; it takes: {accepted}")

    def read(self, src: Path, **options) -> Imported:  # pragma: no cover - abstract
        raise NotImplementedError


def require_h5py():
    """h5py, or a ConfigError naming the extra that brings it."""
    try:
        import h5py
    except ImportError:
        raise ConfigError(f"reading HDF5 datasets needs h5py: {FORMATS_EXTRA}") from None
    return h5py


# ----------------------------------------------------------------------------------- checks

_KINDS = {
    "float": "a floating-point or integer array",
    "int": "an integer array (or floats holding whole numbers)",
    "bool": "a boolean or 0/1 array",
}


def check_array(array, file, key: str, shape=None, kind: str = "float", finite: bool = True) -> np.ndarray:
    """``array`` as a numeric numpy array of the expected shape, or a DatasetError naming ``key``.

    shape: a tuple with None for free sizes; kind: "float", "int" or "bool"; float arrays must be
    finite unless ``finite=False``. Integer-valued floats pass as "int"; 0/1 numbers pass as "bool".
    """
    try:
        array = np.asarray(array)
    except Exception as error:  # ragged lists and the like
        raise DatasetError(f"{file}: key {key!r} is not an array ({error})") from None
    if shape is not None and (array.ndim != len(shape) or any(e is not None and e != s for e, s in zip(shape, array.shape))):
        pattern = ", ".join("T" if i == 0 and e is None else ("*" if e is None else str(e)) for i, e in enumerate(shape))
        raise DatasetError(
            f"{file}: key {key!r} has shape {list(array.shape)}, expected [{pattern}] ({len(shape)} dimensions)"
        )
    if array.dtype == bool:
        pass
    elif not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DatasetError(f"{file}: key {key!r} has dtype {array.dtype}, expected {_KINDS[kind]}")
    if np.issubdtype(array.dtype, np.floating) and (finite or kind != "float") and array.size and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DatasetError(f"{file}: key {key!r} holds {bad} NaN or inf values; expected finite numbers")
    if kind == "int" and np.issubdtype(array.dtype, np.floating) and array.size and not (array == np.round(array)).all():
        raise DatasetError(f"{file}: key {key!r} holds non-integer values, expected {_KINDS['int']}")
    if kind == "bool" and array.dtype != bool:
        if array.size and not np.isin(array, (0, 1)).all():
            raise DatasetError(f"{file}: key {key!r} holds values other than 0 and 1, expected {_KINDS['bool']}")
        array = array.astype(bool)
    return array


def check_rows(file, arrays: dict, rows: int | None = None, axis_name: str = "rows") -> int:
    """All arrays share their first dimension; returns it (DatasetError naming the odd key)."""
    for key, array in arrays.items():
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            first = next(iter(arrays))
            raise DatasetError(
                f"{file}: key {key!r} has {array.shape[0]} {axis_name}, expected {rows} like {first!r}"
            )
    return rows


def rescale_actions(action: np.ndarray, file, key: str, bounds=None):
    """Continuous actions mapped to [-1, 1]; returns (actions, low, high) in the env's units.

    Without ``bounds`` the actions must already lie in [-1, 1] (within 1e-5, then clipped).
    """
    action = action.astype(np.float32)
    dim = action.shape[-1]
    if bounds is not None:
        low = np.broadcast_to(np.asarray(bounds[0], np.float32), (dim,))
        high = np.broadcast_to(np.asarray(bounds[1], np.float32), (dim,))
        if not (high > low).all():
            raise ConfigError(f"--action-bounds: every high must exceed its low, got low {low.tolist()} high {high.tolist()}")
        action = 2.0 * (action - low) / (high - low) - 1.0
    else:
        low, high = -np.ones(dim, np.float32), np.ones(dim, np.float32)
    if action.size and np.abs(action).max() > 1.0 + 1e-5:
        raise DatasetError(
            f"{file}: key {key!r} holds actions outside [-1, 1] (max |a| = {np.abs(action).max():.4g} after "
            "rescaling); pass the environment's bounds with --action-bounds LOW HIGH"
        )
    return np.clip(action, -1.0, 1.0), low.tolist(), high.tolist()


def state_from_agents(agent_state: np.ndarray) -> np.ndarray:
    """A global state [T, S] from per-agent copies [T, N, S]: one copy if all agents agree, else concatenated."""
    if agent_state.shape[1] == 1 or np.array_equal(agent_state, np.broadcast_to(agent_state[:, :1], agent_state.shape)):
        return agent_state[:, 0]
    return agent_state.reshape(agent_state.shape[0], -1)


def fix_empty_masks(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows of an action mask with no available action (padding, terminal next steps) become all True.

    Such rows only appear where nothing is bootstrapped; all-True keeps a max over masked values finite.
    """
    empty = ~mask.any(-1)
    if empty.any():
        mask = mask.copy()
        mask[empty] = True
    return mask, int(empty.sum())


# ------------------------------------------------------------------------------- assembling

def episodes_from_ends(ends: np.ndarray) -> np.ndarray:
    """Episode ids [T] (0, 1, ...) of consecutive rows, a new episode starting after each end."""
    ends = np.asarray(ends, bool)
    return np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64) if len(ends) else np.zeros(0, np.int64)


def next_rows_flat(terminated: np.ndarray, truncated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows stored one after another (next step = next row), the next-row index of every row.

    A row that ends its episode (terminated or truncated, or the last row) has no stored next
    step: its next fields repeat the row itself (never bootstrapped when terminated; an
    approximation when truncated). The last row of the file is marked truncated unless terminated.
    Returns (next_index, terminated, truncated).
    """
    n = len(terminated)
    terminated = np.asarray(terminated, bool).copy()
    truncated = np.asarray(truncated, bool) & ~terminated
    if n:
        truncated[-1] |= not terminated[-1]
    ends = terminated | truncated
    index = np.arange(n)
    return np.where(ends, index, np.minimum(index + 1, max(n - 1, 0))), terminated, truncated


def make_transitions(file, *, obs, next_obs, state, next_state, action, reward, terminated, truncated, episode,
                     action_mask=None, next_action_mask=None, agent_state=None, next_agent_state=None,
                     agent_reward=None) -> TensorDict:
    """A TensorDict [T] of the batch contract from numpy arrays (dtypes converted here).

    ``reward``: team reward [T] or [T, 1]; ``agent_reward`` [T, N] or [T, N, 1]; flags [T].
    Actions are int64 indices [T, N] (discrete) or float32 in [-1, 1] [T, N, A].
    """
    n = len(obs)
    f32 = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # a copy: sources may be read-only
    flag = lambda a: torch.from_numpy(np.array(a, bool).reshape(n, 1))
    terminated, truncated = flag(terminated), flag(truncated)
    data = {
        schema.OBS: f32(obs), schema.NEXT_OBS: f32(next_obs),
        schema.STATE: f32(state), schema.NEXT_STATE: f32(next_state),
        schema.REWARD: f32(np.asarray(reward).reshape(n, 1)),
        schema.TERMINATED: terminated, schema.TRUNCATED: truncated, schema.DONE: terminated | truncated,
        schema.EPISODE: torch.from_numpy(np.array(episode, np.int64)),
    }
    action = np.asarray(action)
    if action_mask is not None:
        data[schema.ACTION] = torch.from_numpy(action.astype(np.int64))
        data[schema.ACTION_MASK] = torch.from_numpy(np.array(action_mask, bool))
        data[schema.NEXT_ACTION_MASK] = torch.from_numpy(np.array(next_action_mask, bool))
    else:
        data[schema.ACTION] = f32(action)
    if agent_state is not None:
        data[schema.AGENT_STATE], data[schema.NEXT_AGENT_STATE] = f32(agent_state), f32(next_agent_state)
    if agent_reward is not None:
        data[schema.AGENT_REWARD] = f32(np.asarray(agent_reward).reshape(n, -1, 1))
    for key in (schema.OBS, schema.STATE, schema.REWARD):
        if not torch.isfinite(data[key]).all():
            raise DatasetError(f"{file}: {schema.key_name(key)} holds NaN or inf values after conversion")
    return TensorDict(data, batch_size=[n])


def check_chosen_available(file, action: np.ndarray, mask: np.ndarray, action_key: str, mask_key: str) -> None:
    """Discrete actions are indices in [0, K) marked available by the mask (DatasetError otherwise)."""
    k = mask.shape[-1]
    if action.size and (action.min() < 0 or action.max() >= k):
        raise DatasetError(
            f"{file}: key {action_key!r} holds action indices in [{action.min()}, {action.max()}], "
            f"expected [0, {k}) for the {k} actions of {mask_key!r}"
        )
    chosen = np.take_along_axis(mask, action[..., None].astype(np.int64), -1)[..., 0]
    if not chosen.all():
        row = np.argwhere(~chosen)[0].tolist()
        raise DatasetError(
            f"{file}: the action in {action_key!r} at index {row} is marked unavailable by {mask_key!r}; "
            "expected every chosen action to be available"
        )


# ------------------------------------------------------------------------ reference returns

def load_reference_table(path=None) -> list[dict]:
    """The entries of a table of published reference returns (the shipped one by default)."""
    path = Path(path) if path is not None else PUBLISHED_TABLE
    try:
        table = json.loads(path.read_text())
        entries = table["entries"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise TypeError("'entries' must be a list of objects")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"cannot read the reference table {path}: {error}") from None
    return entries


def lookup_reference(fmt: str, task: str | None, quality: str | None = None, table=None) -> dict | None:
    """The published {random, expert, source} for a format and task (quality-specific first), or None."""
    if not task:
        return None
    best = None
    for entry in load_reference_table(table):
        if entry.get("format") != fmt or entry.get("task") != task:
            continue
        if entry.get("quality") in (None, quality):
            if best is None or entry.get("quality") is not None:
                best = entry
    if best is None:
        return None
    return {"random": best.get("random"), "expert": best.get("expert"),
            "source": f"published value: {best.get('source', 'no citation given')}"}


def reference_returns(fmt, task, quality, reference_random=None, reference_expert=None, table=None,
                      recorded: dict | None = None) -> dict:
    """Reference returns of an imported dataset: flags, else the table, else those the source recorded, else null."""
    if reference_random is not None or reference_expert is not None:
        if reference_random is None or reference_expert is None:
            raise ConfigError("give both --reference-random and --reference-expert (or neither)")
        return {"random": float(reference_random), "expert": float(reference_expert),
                "source": "given on the command line (--reference-random/--reference-expert)"}
    published = lookup_reference(fmt, task, quality, table)
    if published is not None:
        return published
    if recorded and recorded.get("random") is not None and recorded.get("expert") is not None:
        return dict(recorded)
    return {"random": None, "expert": None,
            "source": "none: no flag and no published value for this task; normalised scores are not reported"}


# ----------------------------------------------------------------------------------- convert

def convert(fmt: str, src, dst, *, reference_random=None, reference_expert=None, reference_table=None,
            task=None, quality=None, env=None, overwrite=False, **options):
    """Read ``src`` in format ``fmt`` and write our dataset at ``dst``; returns the loaded Dataset.

    ``task``/``quality``/``env`` override what the importer infers from the file names.
    Importer-specific ``options`` (e.g. ``next_row_compat`` for omiga) are checked by the importer.
    """
    from lightning_marl import registry
    from lightning_marl.data.dataset import write_dataset

    importer = registry.get("importer", fmt)()
    importer.check_options(options)
    src = Path(src)
    if not src.exists():
        raise DatasetError(f"no {fmt} data at {src}: the path does not exist")
    imported = importer.read(src, **options)
    meta = dict(imported.metadata)
    env_meta = dict(meta.get("env") or {"name": None, "task": None, "params": {}})
    if task:
        env_meta["task"] = task
    if env:
        env_meta["name"] = env
    meta["env"] = env_meta
    if quality:
        meta["quality"] = quality
    meta["reference_returns"] = reference_returns(
        fmt, env_meta.get("task"), meta.get("quality"), reference_random, reference_expert, reference_table,
        recorded=meta.get("reference_returns"),
    )
    meta["spec"] = imported.spec
    meta.setdefault("generation", {})
    meta["generation"] = {**meta["generation"], "command": f"lightning_marl dataset convert --from {fmt} {src} {dst}",
                          "versions": _versions()}
    return write_dataset(dst, imported.transitions, meta, overwrite=overwrite)


def _versions() -> dict:
    import platform

    import tensordict

    from lightning_marl import __version__ as ours

    return {"lightning_marl": ours, "torch": torch.__version__, "tensordict": tensordict.__version__,
            "python": platform.python_version()}
