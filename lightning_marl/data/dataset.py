"""Datasets on disk: a directory of memory-mapped arrays plus ``metadata.json``.

Layout::

    DATASET/
      metadata.json                  schema version, env, spec, quality, statistics, reference
                                     returns, generation, and one entry per array (file, dtype,
                                     shape, sha256)
      arrays/agents/observation.bin  raw little-endian arrays, one file per contract key
      ...

Loading maps the files without reading them (DDP ranks on one machine share the page cache).
Every load checks that each file exists and has the size its dtype and shape imply; full
checksums run in ``dataset verify`` and automatically below 1 GiB. Writes go to a temporary
sibling directory that is renamed when complete, so a crash never leaves a dataset that loads.

Example:
    >>> ds = load_dataset("path/to/dataset")                      # doctest: +SKIP
    >>> ds.transitions[("agents", "observation")].shape           # doctest: +SKIP
    torch.Size([20000, 3, 18])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.memmap import MemoryMappedTensor

from lightning_marl.data import schema
from lightning_marl.data.schema import SCHEMA_VERSION, TaskSpec, key_name
from lightning_marl.errors import DatasetError

FORMAT = "lightning_marl.dataset"
AUTO_VERIFY_BYTES = 1 << 30
_DTYPES = {str(d): d for d in (torch.float32, torch.float64, torch.int64, torch.int32, torch.bool, torch.uint8)}


@dataclass
class Dataset:
    """A loaded dataset: memory-mapped transitions [T] following the batch contract, and metadata.

    Example:
        >>> ds = load_dataset("path/to/dataset")    # doctest: +SKIP
        >>> ds.normalised_score(-12.0)              # doctest: +SKIP
        41.3
    """

    path: Path
    transitions: TensorDict
    metadata: dict

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec.from_dict(self.metadata["spec"])

    @property
    def id(self) -> str:
        return self.metadata["id"]

    @property
    def checksum(self) -> str:
        return self.metadata["checksum"]

    @property
    def reference_returns(self) -> dict:
        return self.metadata.get("reference_returns") or {}

    def __len__(self) -> int:
        return self.transitions.shape[0]

    def normalised_score(self, episode_return: float) -> float | None:
        return normalised_score(episode_return, self.reference_returns)


def normalised_score(episode_return: float, reference_returns: dict) -> float | None:
    """100·(R − R_random)/(R_expert − R_random), or None without both reference returns."""
    low, high = reference_returns.get("random"), reference_returns.get("expert")
    if low is None or high is None or high == low:
        return None
    return 100.0 * (episode_return - low) / (high - low)


def episode_returns(transitions: TensorDict) -> torch.Tensor:
    """Team return of every episode (sum of next.reward over its transitions), by episode id order."""
    episode = transitions.get(schema.EPISODE)
    ids, inverse = torch.unique(episode, return_inverse=True)
    returns = torch.zeros(len(ids), dtype=torch.float64)
    returns.index_add_(0, inverse, transitions.get(schema.REWARD)[:, 0].double())
    return returns


def _array_file(key) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    return "arrays/" + "/".join(parts) + ".bin"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_dataset(path, transitions: TensorDict, metadata: dict, overwrite: bool = False) -> Dataset:
    """Validate ``transitions`` against the contract and write them atomically to ``path``.

    ``metadata`` must hold ``spec`` (a TaskSpec or its dict) and should hold ``env``
    ({name, task, params}), ``quality``, ``reference_returns`` ({random, expert}),
    ``team_reward_rule`` and ``generation`` (command, seed, versions). Counts, return statistics,
    array entries and checksums are computed here.
    """
    path = Path(path)
    spec = metadata["spec"] if isinstance(metadata["spec"], TaskSpec) else TaskSpec.from_dict(metadata["spec"])
    schema.validate_transitions(transitions, spec, where=f"dataset for {path}")
    if path.exists() and not overwrite:
        raise DatasetError(f"{path} already exists; pass overwrite=True (or --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        arrays = {}
        for key in sorted(transitions.keys(include_nested=True, leaves_only=True), key=key_name):
            value = transitions.get(key).contiguous().cpu()
            file = tmp / _array_file(key)
            file.parent.mkdir(parents=True, exist_ok=True)
            MemoryMappedTensor.from_tensor(value, filename=str(file), copy_data=True)
            arrays[key_name(key)] = {
                "file": _array_file(key),
                "dtype": str(value.dtype),
                "shape": list(value.shape),
                "sha256": _sha256(file),
            }
        returns = episode_returns(transitions)
        meta = dict(metadata)
        meta.update(
            format=FORMAT,
            schema_version=SCHEMA_VERSION,
            id=meta.get("id") or path.name,
            spec=spec.to_dict(),
            n_transitions=int(transitions.shape[0]),
            n_episodes=int(len(returns)),
            episode_returns={
                "mean": float(returns.mean()) if len(returns) else None,
                "std": float(returns.std(unbiased=False)) if len(returns) else None,
                "min": float(returns.min()) if len(returns) else None,
                "max": float(returns.max()) if len(returns) else None,
            },
            arrays=arrays,
            checksum=hashlib.sha256(
                "".join(f"{k}:{v['sha256']}" for k, v in sorted(arrays.items())).encode()
            ).hexdigest(),
        )
        meta.setdefault("reference_returns", {"random": None, "expert": None})
        _write_json_atomic(tmp / "metadata.json", meta)
        _fsync_tree(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_dataset(path, verify="never")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def read_metadata(path) -> dict:
    """metadata.json of a dataset, checked for format and schema version."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"no dataset at {path}: expected a directory holding metadata.json")
    meta_file = path / "metadata.json"
    if not meta_file.exists():
        raise DatasetError(f"{path} has no metadata.json: not a lightning_marl dataset (or an unfinished write)")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{meta_file} is not valid JSON ({error}); the dataset is corrupt") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_file} holds a JSON {type(meta).__name__}, expected an object; the dataset is corrupt")
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{meta_file}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema version {version} is not supported by this lightning_marl "
            f"(which reads version {SCHEMA_VERSION}); convert it with a matching release"
        )
    for field_name in ("spec", "arrays", "n_transitions", "checksum"):
        if field_name not in meta:
            raise DatasetError(f"{meta_file} lacks the field {field_name!r}; the dataset is corrupt")
    _check_metadata_types(meta, meta_file)
    return meta


def _check_metadata_types(meta: dict, meta_file: Path) -> None:
    """The fields ``load_dataset`` reads have the JSON types it expects (a DatasetError naming the field if not)."""
    def corrupt(what: str):
        return DatasetError(f"{meta_file}: {what}; the dataset is corrupt")

    count = meta["n_transitions"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise corrupt(f"n_transitions is {count!r}, expected a non-negative integer")
    if not isinstance(meta["arrays"], dict):
        raise corrupt(f"arrays is a {type(meta['arrays']).__name__}, expected an object of array entries")
    for name, entry in meta["arrays"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("file", "dtype", "sha256")):
            raise corrupt(f"array entry {name!r} is {entry!r}, expected file, dtype and sha256 strings and a shape")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise corrupt(f"array {name!r} has shape {shape!r}, expected a list of non-negative integers")
    if not isinstance(meta["spec"], dict):
        raise corrupt(f"spec is a {type(meta['spec']).__name__}, expected an object")
    try:
        TaskSpec.from_dict(meta["spec"])
    except (TypeError, ValueError) as error:
        raise corrupt(f"spec cannot be read ({error})") from None


def load_dataset(path, verify: str = "auto") -> Dataset:
    """Map a dataset from disk after checking sizes, shapes and dtypes (and checksums, see verify).

    verify: "auto" (full checksums if the arrays total under 1 GiB), "always" or "never".
    """
    if verify not in ("auto", "always", "never"):
        raise DatasetError(f"verify must be 'auto', 'always' or 'never', not {verify!r}")
    path = Path(path)
    meta = read_metadata(path)
    spec = TaskSpec.from_dict(meta["spec"])
    total = 0
    leaves = {}
    for name, entry in meta["arrays"].items():
        file = path / entry["file"]
        if not file.resolve().is_relative_to(path.resolve()):
            raise DatasetError(f"{path}: array {name!r} points outside the dataset ({entry['file']})")
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise DatasetError(f"{path}: array {name!r} has unsupported dtype {entry['dtype']!r}")
        shape = torch.Size(entry["shape"])
        expected = shape.numel() * torch.empty((), dtype=dtype).element_size()
        if not file.exists():
            raise DatasetError(f"{path}: array file {entry['file']} is missing")
        size = file.stat().st_size
        if size != expected:
            raise DatasetError(
                f"{path}: array {name!r} ({entry['file']}) has {size} bytes, expected {expected} "
                f"for {entry['dtype']} {list(shape)}: the file is truncated or corrupt"
            )
        if shape and shape[0] != meta["n_transitions"]:
            raise DatasetError(f"{path}: array {name!r} has {shape[0]} rows, expected {meta['n_transitions']}")
        total += size
        leaves[tuple(name.split(".")) if "." in name else name] = (file, dtype, shape, entry["sha256"])
    if verify == "always" or (verify == "auto" and total < AUTO_VERIFY_BYTES):
        for name, (file, _, _, digest) in leaves.items():
            if _sha256(file) != digest:
                raise DatasetError(
                    f"{path}: checksum mismatch in {key_name(name)!r} ({file.name}): the data changed "
                    "after it was written; regenerate or re-download the dataset"
                )
    transitions = TensorDict({}, batch_size=[meta["n_transitions"]])
    for key, (file, dtype, shape, _) in leaves.items():
        transitions.set(key, MemoryMappedTensor.from_filename(str(file), dtype=dtype, shape=shape))
    if verify != "never":
        schema.validate_transitions(transitions, spec, where=str(path))
    return Dataset(path=path, transitions=transitions, metadata=meta)


def verify_dataset(path) -> Dataset:
    """Full check of a dataset: sizes, dtypes, every checksum and the batch contract."""
    return load_dataset(path, verify="always")
