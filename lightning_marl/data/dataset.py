"""Datasets on disk: a directory of memory-mapped arrays plus ``metadata.json``.

Layout::

    DATASET/
      metadata.json                  schema version, env, spec, quality, statistics, reference
                                     returns, generation, and one entry per array (file, dtype,
                                     shape, sha256)
      arrays/agents/observation.bin  raw little-endian arrays, one file per contract key: T rows,
      ...                            except that each next-step key ("next", K) is stored once,
      arrays/final_rows.bin          after K's T rows: F more rows, the next-step values of the
                                     final rows listed here (episode ends; see next_steps.py);
                                     metadata.json's next_steps says which keys are stored so;
                                     a state equal to the observations concatenated has no file
                                     (metadata.json's views: a reshaped view of theirs)

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
import warnings
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.memmap import MemoryMappedTensor

from lightning_marl.data import schema
from lightning_marl.data.gather import RowGather
from lightning_marl.data.next_steps import VIEW_CANDIDATES, NextSteps, final_rows, stored_pairs, views_of
from lightning_marl.data.schema import SCHEMA_VERSION, TaskSpec, key_name
from lightning_marl.errors import DatasetError

FORMAT = "lightning_marl.dataset"
AUTO_VERIFY_BYTES = 1 << 30
GATHER_WARNING_BYTES = 1 << 30  # Dataset.transitions warns before gathering this much into memory
FINAL_ROWS = "final_rows"  # the array of rows whose next-step values follow the T rows (next_steps.py)
_DTYPES = {str(d): d for d in (torch.float32, torch.float64, torch.int64, torch.int32, torch.bool, torch.uint8)}


class Dataset:
    """A loaded dataset: transitions [T] following the batch contract, and metadata.

    ``arrays`` are the per-row arrays as stored (memory-mapped when loaded from disk). A dataset
    written by this version stores each next-step key once, in the array of the key it pairs with
    (data/next_steps.py): ``next_sources`` maps such a key to that array, and ``next_steps``
    locates each row's next-step value in it. ``rows(index)`` and ``chunks()`` gather every key
    of the contract without reading more than the rows asked for; ``transitions`` is all of
    them at once, which for such a dataset holds the next-step keys in memory (fine for the
    small datasets of tests and exports; training samples through ``rows``). A Dataset built
    from a TensorDict of the whole contract (``Dataset(None, td, {})``) has no next sources.

    Example:
        >>> ds = load_dataset("path/to/dataset")    # doctest: +SKIP
        >>> ds.normalised_score(-12.0)              # doctest: +SKIP
        41.3
        >>> ds.rows(torch.tensor([0, 5]))["next", "agents", "observation"].shape  # doctest: +SKIP
        torch.Size([2, 3, 18])
    """

    def __init__(self, path, transitions: TensorDict, metadata: dict, *, next_sources: dict | None = None,
                 next_steps: NextSteps | None = None, stored: TensorDict | None = None):
        self.path = path
        self.arrays = transitions
        self.metadata = metadata
        self.next_sources = next_sources or {}
        self.next_steps = next_steps
        self.stored = stored if stored is not None else transitions
        self._gather = RowGather(self.arrays, self.next_sources, self.next_steps)
        self._gathers: dict = {}  # RowGathers of the key subsets that rows(index, keys) was asked for
        self._transitions = None if self.next_sources else transitions

    @property
    def transitions(self) -> TensorDict:
        """Every key of the contract for all T rows. The next-step keys a dataset stores once are
        gathered into memory on first use (their size: about the observations and states)."""
        if self._transitions is None:
            size = sum(source[:1].nbytes for source in self.next_sources.values()) * len(self)
            if size >= GATHER_WARNING_BYTES:
                warnings.warn(f"gathering {size / 1e9:.1f} GB of next-step fields of {self.path} into memory "
                              "(Dataset.transitions); Dataset.rows and Dataset.chunks read only the rows they "
                              "are asked for", stacklevel=2)
            transitions = self.arrays.copy()  # shallow: the per-row arrays stay memory-mapped
            following = self.next_steps.positions(torch.arange(len(self)))
            for key, source in self.next_sources.items():
                transitions.set(key, source.index_select(0, following.to(source.device)))
            self._transitions = transitions
        return self._transitions

    def keys(self) -> list:
        """The contract keys of a row (leaf keys, nested as tuples)."""
        return list(self.arrays.keys(True, True)) + list(self.next_sources)

    def rows(self, index: torch.Tensor, keys=None) -> TensorDict:
        """Rows ``index`` (1-D int64) with every key of the contract, gathered array by array;
        with ``keys``, only those of them that the dataset has (nothing else is read)."""
        if keys is None:
            return self._gather(index)
        keys = tuple(dict.fromkeys(keys))
        if keys not in self._gathers:
            per_row = set(self.arrays.keys(True, True))
            own = [key for key in keys if key in per_row]
            sources = {key: self.next_sources[key] for key in keys if key in self.next_sources and key not in own}
            self._gathers[keys] = RowGather(self.arrays.select(*own), sources, self.next_steps if sources else None)
        return self._gathers[keys](index)

    def chunks(self, size: int = 1 << 16):
        """Consecutive rows, ``size`` at a time, with every key of the contract."""
        for start in range(0, len(self), size):
            yield self.rows(torch.arange(start, min(len(self), start + size)))

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
        return self.arrays.shape[0]

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
        keys = list(transitions.keys(include_nested=True, leaves_only=True))
        pairs = stored_pairs(keys)  # next-step key -> the key whose array stores it
        final = final_rows(transitions, pairs)
        next_of = {own: nxt for nxt, own in pairs.items()}
        views = views_of(transitions, pairs, final)  # key -> the key whose file it is a view of
        arrays = {}
        for key in sorted((k for k in keys if k not in pairs and k not in views), key=key_name):
            parts = [transitions.get(key)]
            if key in next_of:  # its T rows, then the next-step values of the final rows
                parts.append(transitions.get(next_of[key]).index_select(0, final))
            arrays[key_name(key)] = _write_array(tmp, key, parts)
        if pairs:
            arrays[FINAL_ROWS] = _write_array(tmp, FINAL_ROWS, [final])
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
        meta.pop("next_steps", None)
        meta.pop("views", None)
        if views:
            meta["views"] = {key_name(k): {"of": key_name(o), "shape": list(transitions.get(k).shape[1:])}
                             for k, o in sorted(views.items(), key=str)}
        if pairs:
            meta["next_steps"] = {"final_rows": FINAL_ROWS,
                                  "stored_in": {key_name(n): key_name(o) for n, o in sorted(pairs.items(), key=str)}}
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


def _write_array(root: Path, key, parts: list) -> dict:
    """Write the rows of ``parts`` one after the other as one raw array; its metadata entry."""
    file = root / _array_file(key)
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "wb") as handle:
        for part in parts:
            part.detach().cpu().contiguous().numpy().tofile(handle)
    shape = [sum(len(p) for p in parts), *parts[0].shape[1:]]
    return {"file": _array_file(key), "dtype": str(parts[0].dtype), "shape": shape, "sha256": _sha256(file)}


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
    if version not in schema.READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
        raise DatasetError(
            f"{path}: schema version {version!r} is not supported by this lightning_marl "
            f"(which reads versions {', '.join(map(str, schema.READABLE_SCHEMA_VERSIONS))}); "
            "convert it with a matching release"
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
    views = meta.get("views")
    if views is not None:
        candidates = {key_name(k): key_name(o) for k, o in VIEW_CANDIDATES.items()}
        if not isinstance(views, dict) or any(
                not isinstance(view, dict) or candidates.get(name) != view.get("of") or name in meta["arrays"]
                or view.get("of") not in meta["arrays"] or not isinstance(view.get("shape"), list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in view["shape"])
                for name, view in views.items()):
            raise corrupt(f"views is {views!r}, expected {{key: {{of: array, shape: [...]}}}} among {candidates}")
    stored_arrays = set(meta["arrays"]) | set(views or {})
    next_steps = meta.get("next_steps")
    if next_steps is not None:
        stored_in = next_steps.get("stored_in") if isinstance(next_steps, dict) else None
        known = {key_name(n): key_name(o) for n, o in schema.NEXT_STEP_OF.items()}
        final = next_steps.get("final_rows") if isinstance(next_steps, dict) else None
        if (not isinstance(stored_in, dict) or not isinstance(final, str) or final not in meta["arrays"]
                or any(not isinstance(o, str) or known.get(n) != o or o not in stored_arrays or n in stored_arrays
                       for n, o in stored_in.items())):
            raise corrupt(f"next_steps is {next_steps!r}, expected final_rows naming an array and stored_in "
                          f"pairs among {known} whose arrays exist")
    if not isinstance(meta["spec"], dict):
        raise corrupt(f"spec is a {type(meta['spec']).__name__}, expected an object")
    try:
        TaskSpec.from_dict(meta["spec"])
    except (TypeError, ValueError) as error:
        raise corrupt(f"spec cannot be read ({error})") from None


def load_dataset(path, verify: str = "auto") -> Dataset:
    """Map a dataset from disk after checking sizes, shapes and dtypes (and checksums, see verify).

    verify: "auto" (full checksums if the arrays total under 1 GiB), "always" or "never". Schema
    versions 1 (next-step keys as arrays of their own) and 2 load alike.
    """
    if verify not in ("auto", "always", "never"):
        raise DatasetError(f"verify must be 'auto', 'always' or 'never', not {verify!r}")
    path = Path(path)
    meta = read_metadata(path)
    spec = TaskSpec.from_dict(meta["spec"])
    n = meta["n_transitions"]
    next_steps_meta = meta.get("next_steps") or {}
    stored_in = next_steps_meta.get("stored_in", {})
    final_name = next_steps_meta.get("final_rows")
    n_final = meta["arrays"][final_name]["shape"][0] if final_name and meta["arrays"][final_name]["shape"] else 0
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
        rows = n_final if name == final_name else n + n_final if name in stored_in.values() else n
        if not shape or shape[0] != rows:
            raise DatasetError(f"{path}: array {name!r} has shape {list(shape)}, expected {rows} rows")
        total += size
        leaves[name] = (file, dtype, shape, entry["sha256"])
    if verify == "always" or (verify == "auto" and total < AUTO_VERIFY_BYTES):
        for name, (file, _, _, digest) in leaves.items():
            if _sha256(file) != digest:
                raise DatasetError(
                    f"{path}: checksum mismatch in {name!r} ({file.name}): the data changed "
                    "after it was written; regenerate or re-download the dataset"
                )
    stored = TensorDict({}, batch_size=[])
    for name, (file, dtype, shape, _) in leaves.items():
        stored.set(_key(name), MemoryMappedTensor.from_filename(str(file), dtype=dtype, shape=shape))
    next_steps = None
    if final_name:
        next_steps = NextSteps(stored.get(_key(final_name)), n)
        _check_final_rows(next_steps.final, n, path)
    full = {name: stored.get(_key(name)) for name in leaves if name != final_name}  # every array, T (+ F) rows
    for name, view in (meta.get("views") or {}).items():
        source = full[view["of"]]
        rows = n + n_final if name in stored_in.values() else n
        if source.shape[0] != rows or source.shape[1:].numel() != torch.Size(view["shape"]).numel():
            raise DatasetError(f"{path}: {name!r} is recorded as a view of {view['of']!r} {list(source.shape)} "
                               f"with rows of shape {view['shape']} and {rows} rows, which it cannot be; "
                               "the dataset is corrupt")
        # The source file mapped again with the view's shape (same page cache): unlike a reshape of
        # the source, a MemoryMappedTensor pickles as its file (DDP spawn sends datasets to ranks).
        full[name] = MemoryMappedTensor.from_filename(str(leaves[view["of"]][0]), dtype=source.dtype,
                                                      shape=torch.Size([rows, *view["shape"]]))
    arrays = TensorDict({}, batch_size=[n])
    for name, array in full.items():
        arrays.set(_key(name), array[:n])
    next_sources = {_key(nxt): full[own] for nxt, own in stored_in.items()}
    dataset = Dataset(path, arrays, meta, next_sources=next_sources, next_steps=next_steps, stored=stored)
    if verify != "never":
        validate_dataset(dataset, spec, where=str(path))
    return dataset


def _key(name: str):
    return tuple(name.split(".")) if "." in name else name


def _check_final_rows(final: torch.Tensor, n: int, path: Path) -> None:
    """The final rows are int64, strictly increasing, within [0, n), and end at the last row."""
    if final.dtype != torch.int64 or final.ndim != 1:
        raise DatasetError(f"{path}: {FINAL_ROWS} must be a 1-D int64 array, found {final.dtype} {list(final.shape)}")
    if n and (not len(final) or int(final[-1]) != n - 1 or int(final[0]) < 0
              or not bool((final[1:] > final[:-1]).all())):
        raise DatasetError(f"{path}: {FINAL_ROWS} must be increasing row numbers in [0, {n}) ending at the "
                           "last row; the dataset is corrupt")
    if not n and len(final):
        raise DatasetError(f"{path}: {FINAL_ROWS} lists rows of an empty dataset; the dataset is corrupt")


def validate_dataset(dataset: Dataset, spec: TaskSpec, where: str) -> None:
    """``schema.validate_transitions`` over every row, a chunk at a time (with next-step keys gathered)."""
    if not len(dataset):
        schema.validate_transitions(dataset.rows(torch.zeros(0, dtype=torch.int64)), spec, where=where)
    for chunk in dataset.chunks(schema.VALIDATION_CHUNK):
        schema.validate_transitions(chunk, spec, where=where)


def verify_dataset(path) -> Dataset:
    """Full check of a dataset: sizes, dtypes, every checksum and the batch contract."""
    return load_dataset(path, verify="always")
