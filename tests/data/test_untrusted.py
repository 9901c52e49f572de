"""Untrusted files: code payloads are refused, malformed inputs end in our own error types.

The crafted files carry a pickle payload whose ``__reduce__`` runs ``os.system("touch MARKER")``;
every loader must refuse them with our error type while the marker never appears.

The property-based part feeds every importer and our dataset loader malformed inputs (wrong
shapes and dtypes, missing keys, truncated or garbage files, NaN/inf values, corrupted
metadata). Each must end in DatasetError (ConfigError for a bad config) with a message naming
the file, and no dataset may be written. ``CASES`` counts the examples tried per target; the
totals are printed at the end of the module (run with ``-s`` to see them).
"""

import copy
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "importers"))
import foreign_files as ff  # noqa: E402

from lightning_marl.data.dataset import load_dataset, write_dataset  # noqa: E402
from lightning_marl.data.importers.common import convert  # noqa: E402
from lightning_marl.errors import ConfigError, DatasetError  # noqa: E402

CASES: Counter = Counter()
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None, derandomize=True)
FUZZ_SLOW = settings(FUZZ, max_examples=12)  # each vault write goes through tensorstore (~0.5 s)


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    print("\nmalformed inputs tried per target:", dict(CASES), "total", sum(CASES.values()))


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


# ------------------------------------------------------------------ crafted code payloads

@pytest.fixture
def trained_run(tmp_path, climbing_dataset):
    from lightning_marl.config import load_config
    from lightning_marl.run import fit

    cfg = load_config("bc/climbing", [f"data.path={climbing_dataset.path}", "algorithm.steps=4", "eval.episodes=2",
                                      f"run_dir={tmp_path / 'run'}", "progress=false", "checkpoint_every=2"])
    fit(cfg)
    return tmp_path / "run"


def evil_copy(path: Path, marker: Path, out: Path) -> Path:
    """``path`` (a checkpoint or policy.pt) re-saved with a payload object inside."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved["extra"] = Payload(marker)
    torch.save(saved, out)
    return out


def test_crafted_checkpoint_and_policy_are_refused(trained_run, tmp_path):
    from lightning_marl.cli import main
    from lightning_marl.policy import load_policy
    from lightning_marl.run import evaluate

    marker = tmp_path / "payload-ran"
    ckpt = evil_copy(trained_run / "checkpoints" / "last.ckpt", marker, tmp_path / "evil.ckpt")
    policy = evil_copy(trained_run / "policy.pt", marker, tmp_path / "policy.pt")
    raw = tmp_path / "raw.ckpt"  # a plain (non-zip) pickle stream
    raw.write_bytes(__import__("pickle").dumps({"lightning_marl": Payload(marker)}))
    for path in (ckpt, policy, raw):
        with pytest.raises(ConfigError, match="safely"):
            load_policy(path)
    with pytest.raises(ConfigError, match="safely"):
        evaluate(ckpt)
    # resuming training reads the checkpoint through our loader first
    assert main(["fit", "--config", str(trained_run / "config.yaml"), f"resume={ckpt}", "algorithm.steps=6"]) == 2
    assert not marker.exists()
    assert load_policy(trained_run).act(torch.zeros(2, 1)).shape == (2,)  # the genuine files still load


def test_yaml_configs_are_loaded_safely(tmp_path):
    from lightning_marl.config import from_yaml, load_config

    marker = tmp_path / "yaml-ran"
    tag = f"!!python/object/apply:os.system [{json.dumps('touch ' + str(marker))}]"
    config = tmp_path / "evil.yaml"
    config.write_text(f"algorithm: {tag}\n")
    with pytest.raises(ConfigError, match="constructor"):
        load_config(str(config), [])
    with pytest.raises(ConfigError, match="not plain YAML"):
        from_yaml(f"seed: {tag}\n")  # the config text stored in a checkpoint
    run_dir = tmp_path / "run"  # `fit resume=RUN_DIR` reads the run's config.yaml
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"seed: {tag}\n")
    from lightning_marl.cli import main

    assert main(["fit", f"resume={run_dir}"]) == 2
    assert not marker.exists()


def test_numpy_object_arrays_are_refused(tmp_path):
    marker = tmp_path / "numpy-ran"
    arrays = ff.omar_arrays(ff.make_episodes())
    arrays["obs_0.npy"] = np.array([Payload(marker)], dtype=object)
    src = ff.write_npys(tmp_path / "seed_0_data", arrays)
    with pytest.raises(DatasetError, match="obs_0.npy: cannot be read without unpickling"):
        convert("omar", src, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ malformed inputs

def array_mutation(keys, add_axis_keys, float_keys):
    """A strategy of (kind, key, seed) mutations that always make an array layout invalid."""
    return st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(keys)),
        st.tuples(st.just("rows"), st.sampled_from(keys)),
        st.tuples(st.just("add_axis"), st.sampled_from(add_axis_keys)),
        st.tuples(st.just("strings"), st.sampled_from(keys)),
        st.tuples(st.sampled_from(["nan", "inf", "-inf"]), st.sampled_from(float_keys)),
    )


def apply_mutation(arrays: dict, mutation, rng) -> dict:
    arrays = dict(arrays)
    kind, key = mutation
    value = arrays[key]
    if kind == "drop":
        arrays[key] = None
    elif kind == "rows":
        arrays[key] = value[:-1] if rng.random() < 0.5 or len(value) < 2 else np.concatenate([value, value[:1]])
    elif kind == "add_axis":
        arrays[key] = value[..., None]
    elif kind == "strings":
        arrays[key] = value.astype("S8")
    else:
        value = value.astype(np.float32).copy()
        value.reshape(-1)[rng.integers(value.size)] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
        arrays[key] = value
    return arrays


def damage_file(path: Path, how: str, rng) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: int(rng.integers(0, max(len(data) - 1, 1)))])
    else:  # garbage of the same size
        path.write_bytes(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())


def expect_refused(fmt, src, dst, **options):
    with pytest.raises(DatasetError) as info:
        convert(fmt, src, dst, **options)
    assert str(src.name) in str(info.value) or str(src) in str(info.value), info.value
    assert not dst.exists()
    return info.value


def workdir():
    return Path(tempfile.mkdtemp(prefix="lm-fuzz-"))


OMIGA_KEYS = ("o", "s", "a", "r", "d")


@FUZZ
@given(seed=st.integers(0, 1000), mutation=st.one_of(
    array_mutation(OMIGA_KEYS, ("o", "s", "a", "d"), OMIGA_KEYS),
    st.tuples(st.sampled_from(["truncate", "garbage"]), st.just("file"))))
def test_fuzz_omiga_hdf5(seed, mutation):
    CASES["omiga hdf5"] += 1
    rng, root = np.random.default_rng(seed), workdir()
    try:
        arrays = ff.omiga_arrays(ff.make_episodes(seed=seed))
        if mutation[1] != "file":
            arrays = apply_mutation(arrays, mutation, rng)
        src = ff.write_h5(root / "Ant-v2-2x4-expert.hdf5", arrays)
        if mutation[1] == "file":
            damage_file(src, mutation[0], rng)
        expect_refused("omiga", src, root / "out", episode_length=4)
    finally:
        shutil.rmtree(root)


PYMARL_KEYS = ("obs", "state", "actions", "avail_actions", "reward", "terminated", "filled")


@FUZZ
@given(seed=st.integers(0, 1000), mutation=st.one_of(
    array_mutation(PYMARL_KEYS[:-1], PYMARL_KEYS, PYMARL_KEYS),
    st.tuples(st.just("rows"), st.just("filled")),
    st.tuples(st.sampled_from(["truncate", "garbage", "bad_action"]), st.just("file"))))
def test_fuzz_pymarl(seed, mutation):
    CASES["pymarl"] += 1
    rng, root = np.random.default_rng(seed), workdir()
    try:
        arrays = ff.pymarl_arrays(ff.make_episodes(seed=seed, discrete=True))
        if mutation[0] == "bad_action":
            arrays["actions"][0, 0, 0, 0] = ff.K + int(rng.integers(0, 3))
        elif mutation[1] != "file":
            arrays = apply_mutation(arrays, mutation, rng)
        src = ff.write_h5(root / "3m_medium.h5", arrays)
        if mutation[0] in ("truncate", "garbage"):
            damage_file(src, mutation[0], rng)
        expect_refused("pymarl", src, root / "out")
    finally:
        shutil.rmtree(root)


OMAR_FILES = tuple(f"{name}_{i}.npy" for name in ("obs", "acs", "rews", "next_obs", "dones") for i in range(2))


@FUZZ
@given(seed=st.integers(0, 1000), mutation=st.one_of(
    array_mutation(OMAR_FILES, OMAR_FILES, OMAR_FILES),
    st.tuples(st.sampled_from(["truncate", "garbage"]), st.sampled_from(OMAR_FILES))))
def test_fuzz_omar(seed, mutation):
    CASES["omar"] += 1
    rng, root = np.random.default_rng(seed), workdir()
    try:
        arrays = ff.omar_arrays(ff.make_episodes(seed=seed))
        if mutation[0] not in ("truncate", "garbage"):
            arrays = apply_mutation(arrays, mutation, rng)
        src = ff.write_npys(root / "seed_0_data", arrays)
        if mutation[0] in ("truncate", "garbage"):
            damage_file(src / mutation[1], mutation[0], rng)
        expect_refused("omar", src, root / "out")
    finally:
        shutil.rmtree(root)


SMAC_FIELDS = ("state", "obs", "action", "reward", "done", "available_actions")


@FUZZ
@given(seed=st.integers(0, 1000), mutation=st.one_of(
    st.tuples(st.sampled_from(["string", "nan", "ragged", "drop_field", "none"]), st.sampled_from(SMAC_FIELDS)),
    st.tuples(st.sampled_from(["truncate", "garbage", "payload", "short_agent", "not_a_list", "bad_action"]),
              st.just("file"))))
def test_fuzz_omiga_smac_episodes(seed, mutation):
    CASES["omiga smac"] += 1
    rng, root = np.random.default_rng(seed), workdir()
    marker = root / "payload-ran"
    try:
        folder = ff.write_smac_episodes(root / "3m-medium", ff.make_episodes(seed=seed, discrete=True))
        victim = sorted(folder.iterdir())[int(rng.integers(0, 4))]
        kind, field = mutation
        if kind in ("truncate", "garbage"):
            damage_file(victim, kind, rng)
        else:
            episode = torch.load(victim, weights_only=False)  # our own test file: trusted
            agent, step = int(rng.integers(0, ff.N)), int(rng.integers(0, len(episode[0])))
            j = SMAC_FIELDS.index(field) if field in SMAC_FIELDS else 0
            if kind == "payload":
                episode[agent][step][j] = Payload(marker)
            elif kind == "short_agent":
                episode[agent] = episode[agent][:-1] if len(episode[agent]) > 1 else []
            elif kind == "not_a_list":
                episode = {"steps": episode}
            elif kind == "bad_action":
                episode[agent][step][2] = [ff.K + 1]
            elif kind == "drop_field":
                del episode[agent][step][j]
            else:
                value = np.asarray(episode[agent][step][j], np.float32).reshape(-1)
                episode[agent][step][j] = {
                    "string": "x" * (len(value) + 1), "nan": np.full_like(value, np.nan), "none": None,
                    "ragged": np.zeros(len(value) + 1, np.float32) if field not in ("reward", "done", "action")
                    else [0.0, 1.0],
                }[kind]
            torch.save(episode, victim)
        expect_refused("omiga", folder, root / "out")
        assert not marker.exists()
    finally:
        shutil.rmtree(root)


VAULT_KEYS = ("observations", "actions", "rewards", "terminals", "truncations", "infos/state", "infos/legals")
# (truncations are optional, and a vault cannot hold leaves of different lengths: no "drop"/"rows" for them)


@FUZZ_SLOW
@given(seed=st.integers(0, 1000), mutation=st.one_of(
    st.tuples(st.just("drop"), st.sampled_from([k for k in VAULT_KEYS if k != "truncations"])),
    st.tuples(st.just("add_axis"), st.sampled_from(VAULT_KEYS)),
    st.tuples(st.just("agents"), st.sampled_from(["observations", "actions", "rewards", "terminals", "infos/legals"])),
    st.tuples(st.sampled_from(["nan", "inf"]), st.sampled_from(["observations", "rewards", "infos/state"])),
    st.tuples(st.just("complex"), st.sampled_from(["observations", "rewards", "infos/state"])),
    st.tuples(st.sampled_from(["metadata", "manifest"]), st.sampled_from(["truncate", "garbage", "delete"]))))
def test_fuzz_ogmarl_vault(seed, mutation):
    CASES["ogmarl vault"] += 1
    rng, root = np.random.default_rng(seed), workdir()
    try:
        nested = ff.vault_arrays(ff.make_episodes(seed=seed, discrete=True))
        flat = {k: v for k, v in nested.items() if k != "infos"}
        flat.update({f"infos/{k}": v for k, v in nested["infos"].items()})
        kind, key = mutation
        if kind == "complex":
            flat[key] = flat[key].astype(np.complex64)
        elif kind == "agents":  # one agent more in this key than in the others
            flat[key] = np.concatenate([flat[key], flat[key][:, :1]], 1)
        elif kind not in ("metadata", "manifest"):
            flat = apply_mutation(flat, (kind, key), rng)
        arrays = {k: v for k, v in flat.items() if not k.startswith("infos/") and v is not None}
        arrays["infos"] = {k[6:]: v for k, v in flat.items() if k.startswith("infos/") and v is not None}
        src = ff.write_vault(root / "vaults", "smac_3m", "Good", arrays)
        if kind in ("metadata", "manifest"):
            target = src / ("metadata.json" if kind == "metadata" else "manifest.ocdbt")
            target.unlink() if key == "delete" else damage_file(target, key, rng)
        expect_refused("ogmarl", src, root / "out")
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def minari_export(tmp_path_factory):
    from lightning_marl.data.importers.minari_format import export_minari

    root = tmp_path_factory.mktemp("minari")
    ours = convert("pymarl", ff.write_pymarl(root / "3m_medium.h5", ff.make_episodes(discrete=True)), root / "ours")
    return export_minari(ours.path, root / "export")


@FUZZ
@given(seed=st.integers(0, 1000), target=st.sampled_from(["data/main_data.hdf5", "data/metadata.json",
                                                          "lightning_marl.json"]),
       how=st.sampled_from(["truncate", "garbage", "delete", "nan_rewards", "short_rewards"]))
def test_fuzz_minari(minari_export, seed, target, how):
    import h5py

    CASES["minari"] += 1
    rng, root = np.random.default_rng(seed), workdir()
    try:
        src = root / "lightning_marl" / minari_export.name
        shutil.copytree(minari_export, src)
        if how in ("nan_rewards", "short_rewards"):
            with h5py.File(src / "data" / "main_data.hdf5", "r+") as handle:
                rewards = handle["episode_1/rewards"][()]
                del handle["episode_1/rewards"]
                handle["episode_1/rewards"] = np.full_like(rewards, np.nan) if how == "nan_rewards" else rewards[:-1]
        elif how == "delete" and target == "lightning_marl.json":
            (src / target).write_text("{not json")  # deleting the sidecar is allowed: corrupt it instead
        elif how == "delete":
            (src / target).unlink()
        else:
            damage_file(src / target, how, rng)
        expect_refused("minari", src, root / "out")
    finally:
        shutil.rmtree(root)


# --------------------------------------------------------------------------- our own loader

@pytest.fixture(scope="module")
def written_dataset(tmp_path_factory, continuous_transitions):
    td, spec = continuous_transitions
    return write_dataset(tmp_path_factory.mktemp("ours") / "ds", td, {"spec": spec, "quality": "random"})


def _bad_metadata(meta: dict, how: str, rng) -> dict:
    meta = copy.deepcopy(meta)
    name = sorted(meta["arrays"])[int(rng.integers(0, len(meta["arrays"])))]
    entry = meta["arrays"][name]
    if how == "drop_field":
        del meta[["spec", "arrays", "n_transitions", "checksum", "format"][int(rng.integers(0, 5))]]
    elif how == "arrays_list":
        meta["arrays"] = list(meta["arrays"].values())
    elif how == "entry_missing":
        del entry[["file", "dtype", "shape", "sha256"][int(rng.integers(0, 4))]]
    elif how == "shape_garbage":
        entry["shape"] = [["x"], [-3, 2], "12", None, [1e9, 1e9]][int(rng.integers(0, 5))]
    elif how == "dtype_unknown":
        entry["dtype"] = ["torch.complex64", "float32", 7, None][int(rng.integers(0, 4))]
    elif how == "escape":
        entry["file"] = ["../../../etc/passwd", "/etc/passwd", 5][int(rng.integers(0, 3))]
    elif how == "n_transitions":
        meta["n_transitions"] = ["64", -1, 10**12, None, 63][int(rng.integers(0, 5))]
    elif how == "spec":
        meta["spec"] = [{"n_agents": "two"}, {**meta["spec"], "obs_dim": 5}, {**meta["spec"], "bogus": 1}, [],
                        {**meta["spec"], "n_agents": 3}][int(rng.integers(0, 5))]
    elif how == "schema_version":
        meta["schema_version"] = [0, 3, "2", None][int(rng.integers(0, 4))]
    elif how == "next_steps":  # how the next-step fields stored once are found (data/next_steps.py)
        pairs = meta["next_steps"]["stored_in"]
        meta["next_steps"] = [
            None, [], "final_rows", {"stored_in": pairs}, {"final_rows": 5, "stored_in": pairs},
            {"final_rows": "episode", "stored_in": pairs}, {"final_rows": "final_rows", "stored_in": []},
            {"final_rows": "final_rows", "stored_in": {**pairs, "next.state": "agents.observation"}},
            {"final_rows": "final_rows", "stored_in": {**pairs, "next.reward": "state"}},
        ][int(rng.integers(0, 9))]
    elif how == "not_a_dict":
        meta = [meta]
    return meta


@FUZZ
@given(seed=st.integers(0, 1000), how=st.sampled_from([
    "truncate_array", "garbage_array", "nan_with_new_checksum", "metadata_garbage", "metadata_truncate",
    "metadata_delete", "drop_field", "arrays_list", "entry_missing", "shape_garbage", "dtype_unknown", "escape",
    "n_transitions", "spec", "schema_version", "next_steps", "final_rows_values", "not_a_dict"]))
def test_fuzz_dataset_loader(written_dataset, seed, how):
    import hashlib

    CASES["dataset loader"] += 1
    rng, root = np.random.default_rng(seed), workdir()
    try:
        path = root / "ds"
        shutil.copytree(written_dataset.path, path)
        meta_file = path / "metadata.json"
        meta = json.loads(meta_file.read_text())
        name = sorted(meta["arrays"])[int(rng.integers(0, len(meta["arrays"])))]
        array_file = path / meta["arrays"][name]["file"]
        if how in ("truncate_array", "garbage_array"):
            damage_file(array_file, how.split("_")[0], rng)
        elif how == "nan_with_new_checksum":  # a consistent-looking file holding NaN: the contract check catches it
            name = "agents.observation"
            array_file = path / meta["arrays"][name]["file"]
            values = np.fromfile(array_file, np.float32)
            values[int(rng.integers(0, values.size))] = np.nan
            values.tofile(array_file)
            meta["arrays"][name]["sha256"] = hashlib.sha256(array_file.read_bytes()).hexdigest()
            meta_file.write_text(json.dumps(meta))
        elif how == "final_rows_values":  # consistent-looking final rows that break the layout's rules
            final = np.fromfile(path / meta["arrays"]["final_rows"]["file"], np.int64)
            bad = [final[::-1].copy(), np.concatenate([final[:-1], [final[-1] - 1]]), final - 1, final + 1]
            bad[int(rng.integers(0, 4))].tofile(path / meta["arrays"]["final_rows"]["file"])
            meta["arrays"]["final_rows"]["sha256"] = hashlib.sha256(
                (path / meta["arrays"]["final_rows"]["file"]).read_bytes()).hexdigest()
            meta_file.write_text(json.dumps(meta))
        elif how.startswith("metadata_"):
            meta_file.unlink() if how == "metadata_delete" else damage_file(meta_file, how.split("_")[1], rng)
        else:
            meta_file.write_text(json.dumps(_bad_metadata(meta, how, rng)))
        with pytest.raises(DatasetError):
            load_dataset(path)
    finally:
        shutil.rmtree(root)
