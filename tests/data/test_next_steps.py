"""Next-step fields stored once (schema version 2): lossless, smaller, read like before."""

import hashlib
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

from lightning_marl.data import schema
from lightning_marl.data.datamodule import OfflineDataModule, _on_device, sample_seed
from lightning_marl.data.dataset import load_dataset, write_dataset
from lightning_marl.data.gather import RowGather
from lightning_marl.data.next_steps import NextSteps
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import DatasetError

SPEC = TaskSpec(n_agents=2, obs_dim=3, state_dim=5, discrete=True, n_actions=4)


def episodes_of(lengths, break_rows=(), seed=0):
    """Discrete transitions of episodes with ``lengths`` whose next-step fields are the following
    row's, except at episode ends and at ``break_rows`` (rows whose next values differ anyway)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    steps = [torch.randn(length + 1, 2, 3, generator=g) for length in lengths]  # o_0 .. o_L per episode
    obs = torch.cat([s[:-1] for s in steps])
    next_obs = torch.cat([s[1:] for s in steps])
    masks = [torch.rand(length + 1, 2, 4, generator=g) < 0.7 for length in lengths]
    for m in masks:
        m[..., 0] = True  # action 0 always available
    mask, next_mask = torch.cat([m[:-1] for m in masks]), torch.cat([m[1:] for m in masks])
    for row in break_rows:
        next_obs[row] += 1.0
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[torch.tensor(lengths).cumsum(0) - 1] = True
    td = TensorDict({
        schema.OBS: obs, schema.NEXT_OBS: next_obs,
        schema.STATE: obs.flatten(1)[:, :5].clone(), schema.NEXT_STATE: next_obs.flatten(1)[:, :5].clone(),
        schema.ACTION_MASK: mask, schema.NEXT_ACTION_MASK: next_mask,
        schema.ACTION: torch.zeros(n, 2, dtype=torch.int64),
        schema.REWARD: torch.randn(n, 1, generator=g),
        schema.TERMINATED: done.clone(), schema.TRUNCATED: torch.zeros(n, 1, dtype=torch.bool), schema.DONE: done,
        schema.EPISODE: torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)),
    }, [n])
    return td


def assert_same_contract(ours: TensorDict, theirs: TensorDict):
    assert set(ours.keys(True, True)) == set(theirs.keys(True, True))
    for key in theirs.keys(True, True):
        assert ours.get(key).dtype == theirs.get(key).dtype and torch.equal(ours.get(key), theirs.get(key)), key


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8), breaks=st.lists(st.integers(0, 200), max_size=4),
       seed=st.integers(0, 2**16))
def test_every_key_reads_back_exactly_and_final_rows_are_where_values_differ(tmp_path, lengths, breaks, seed):
    n = sum(lengths)
    breaks = sorted({b % n for b in breaks})
    td = episodes_of(lengths, breaks, seed)
    path = tmp_path / f"d{seed}"
    write_dataset(path, td, {"spec": SPEC}, overwrite=True)
    ds = load_dataset(path, verify="always")
    assert_same_contract(ds.transitions, td)
    index = torch.randint(n, (17,), generator=torch.Generator().manual_seed(seed))
    assert_same_contract(ds.rows(index), td[index])
    assert_same_contract(torch.cat(list(ds.chunks(5))), td)
    ends = (torch.tensor(lengths).cumsum(0) - 1).tolist()
    assert ds.next_steps.final.tolist() == sorted(set(ends) | set(breaks))
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["schema_version"] == 2
    assert not any(name.startswith("next.agents.observation") or name == "next.state" for name in meta["arrays"])
    assert meta["arrays"]["agents.observation"]["shape"][0] == n + len(ds.next_steps)
    assert not (path / "arrays" / "next" / "agents" / "observation.bin").exists()


def test_the_stored_bytes_shrink_by_the_next_step_fields(tmp_path):
    td = episodes_of([50] * 8)
    ds = write_dataset(tmp_path / "d", td, {"spec": SPEC})
    on_disk = sum(f.stat().st_size for f in (tmp_path / "d" / "arrays").rglob("*.bin"))
    in_memory = sum(v.nbytes for v in td.values(True, True))
    next_bytes = sum(td.get(k).nbytes for k in (schema.NEXT_OBS, schema.NEXT_STATE, schema.NEXT_ACTION_MASK))
    # What remains of the next-step fields: one row per episode (8 of 400), plus the final rows' numbers.
    assert on_disk == in_memory - next_bytes * (400 - 8) // 400 + 8 * 8
    assert len(ds.next_steps) == 8


def as_schema_1(root, td):
    """Rewrite the dataset at ``root`` (written from ``td``) in the layout of schema version 1: every
    next-step field an array of its own."""
    meta = json.loads((root / "metadata.json").read_text())
    n = meta["n_transitions"]
    for name in meta["next_steps"]["stored_in"].values():  # back to T rows ...
        entry = meta["arrays"][name]
        file = root / entry["file"]
        file.write_bytes(file.read_bytes()[:td.get(tuple(name.split("."))).nbytes])
        entry["shape"][0], entry["sha256"] = n, hashlib.sha256(file.read_bytes()).hexdigest()
    for key in (schema.NEXT_OBS, schema.NEXT_STATE, schema.NEXT_ACTION_MASK):  # ... and an array per next key
        name = schema.key_name(key)
        file = root / "arrays" / (name.replace(".", "/") + ".bin")
        file.parent.mkdir(parents=True, exist_ok=True)
        td.get(key).numpy().tofile(file)
        meta["arrays"][name] = {"file": str(file.relative_to(root)), "dtype": str(td.get(key).dtype),
                                "shape": list(td.get(key).shape), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    (root / "arrays" / "final_rows.bin").unlink()
    del meta["arrays"]["final_rows"], meta["next_steps"]
    meta["schema_version"] = 1
    (root / "metadata.json").write_text(json.dumps(meta))


def test_a_schema_1_dataset_with_next_step_arrays_still_loads(tmp_path):
    td = episodes_of([3, 5, 2])
    write_dataset(tmp_path / "v1", td, {"spec": SPEC})
    as_schema_1(tmp_path / "v1", td)
    ds = load_dataset(tmp_path / "v1", verify="always")
    assert ds.next_steps is None and not ds.next_sources
    assert_same_contract(ds.transitions, td)
    assert_same_contract(ds.rows(torch.tensor([9, 0, 3])), td[torch.tensor([9, 0, 3])])


def test_dataset_upgrade_rewrites_schema_1_in_place_and_leaves_current_datasets_alone(tmp_path, capsys):
    from lightning_marl.cli import main

    td = episodes_of([6, 5, 7])
    write_dataset(tmp_path / "d", td, {"spec": SPEC, "id": "mine", "quality": "medium"})
    as_schema_1(tmp_path / "d", td)
    old_bytes = sum(f.stat().st_size for f in (tmp_path / "d").rglob("*.bin"))
    old_checksum = json.loads((tmp_path / "d" / "metadata.json").read_text())["checksum"]
    assert main(["dataset", "upgrade", str(tmp_path / "d")]) == 0
    assert "schema version 1 -> 2" in capsys.readouterr().out
    ds = load_dataset(tmp_path / "d", verify="always")
    assert ds.metadata["schema_version"] == 2 and ds.id == "mine" and ds.metadata["quality"] == "medium"
    assert ds.metadata["upgraded_from"] == {"schema_version": 1, "checksum": old_checksum}
    assert_same_contract(ds.transitions, td)
    assert sum(f.stat().st_size for f in (tmp_path / "d").rglob("*.bin")) < old_bytes
    assert not (tmp_path / "d" / "arrays" / "next" / "state.bin").exists()
    stamp = (tmp_path / "d" / "metadata.json").stat().st_mtime_ns
    assert main(["dataset", "upgrade", str(tmp_path / "d")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "d" / "metadata.json").stat().st_mtime_ns == stamp


def test_dataset_upgrade_refuses_a_corrupt_dataset_and_keeps_it(tmp_path):
    from lightning_marl.cli import main

    td = episodes_of([4, 4])
    write_dataset(tmp_path / "d", td, {"spec": SPEC})
    as_schema_1(tmp_path / "d", td)
    file = tmp_path / "d" / "arrays" / "next" / "state.bin"
    data = bytearray(file.read_bytes())
    data[0] ^= 0xFF
    file.write_bytes(bytes(data))
    assert main(["dataset", "upgrade", str(tmp_path / "d")]) != 0
    assert file.read_bytes() == bytes(data)  # untouched
    assert json.loads((tmp_path / "d" / "metadata.json").read_text())["schema_version"] == 1


@pytest.mark.parametrize("damage", ["unsorted", "missing_last", "negative", "no_metadata_pairing", "foreign_pair",
                                    "unhashable_final_rows", "unhashable_pair"])
def test_damaged_final_rows_or_pairings_are_refused(tmp_path, damage):
    write_dataset(tmp_path / "d", episodes_of([3, 5, 2]), {"spec": SPEC})
    meta_file, final_file = tmp_path / "d" / "metadata.json", tmp_path / "d" / "arrays" / "final_rows.bin"
    assert load_dataset(tmp_path / "d").next_steps.final.tolist() == [2, 7, 9]  # what the damage starts from
    meta = json.loads(meta_file.read_text())
    if damage == "unsorted":
        torch.tensor([7, 2, 9]).numpy().tofile(final_file)
    elif damage == "missing_last":
        torch.tensor([2, 7, 8]).numpy().tofile(final_file)
    elif damage == "negative":
        torch.tensor([-1, 7, 9]).numpy().tofile(final_file)
    elif damage == "no_metadata_pairing":
        meta["next_steps"]["final_rows"] = "nowhere"
    elif damage == "foreign_pair":
        meta["next_steps"]["stored_in"]["next.state"] = "agents.observation"
    elif damage == "unhashable_final_rows":
        meta["next_steps"]["final_rows"] = ["final_rows"]
    elif damage == "unhashable_pair":
        meta["next_steps"]["stored_in"]["next.state"] = ["state"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="final_rows|next_steps"):
        load_dataset(tmp_path / "d", verify="never")


def test_the_datamodule_batches_hold_every_key_also_from_device_copies(tmp_path):
    td = episodes_of([4, 6, 1, 5])
    ds = write_dataset(tmp_path / "d", td, {"spec": SPEC})
    datamodule = OfflineDataModule(ds, batch_size=32, seed=3)
    batch = datamodule.sample(0)
    rows = torch.randint(len(td), (32,), generator=torch.Generator().manual_seed(sample_seed(3, 0, 0)))
    assert_same_contract(batch, td[rows])
    # The copy an accelerator gets: per-row arrays that a next-step source begins with become
    # views of the source's copy (their rows are copied once).
    arrays, sources, steps = _on_device(ds.arrays, ds.next_sources, ds.next_steps, "cpu")
    assert arrays.get(schema.OBS).data_ptr() == sources[schema.NEXT_OBS].data_ptr()
    assert_same_contract(RowGather(arrays, sources, steps)(rows), td[rows])


def test_positions_without_final_rows_are_the_following_rows():
    assert NextSteps(torch.zeros(0, dtype=torch.int64), 3).positions(torch.tensor([0, 2])).tolist() == [1, 3]


def test_gathering_every_next_step_field_into_memory_warns_above_the_threshold(tmp_path, monkeypatch):
    from lightning_marl.data import dataset as dataset_module

    td = episodes_of([4, 4])
    write_dataset(tmp_path / "d", td, {"spec": SPEC})
    monkeypatch.setattr(dataset_module, "GATHER_WARNING_BYTES", 8 * (2 * 3 * 4 + 5 * 4 + 2 * 4))  # exactly their size
    with pytest.warns(UserWarning, match="gathering 0.0 GB of next-step fields"):
        load_dataset(tmp_path / "d", verify="never").transitions
    monkeypatch.setattr(dataset_module, "GATHER_WARNING_BYTES", 8 * (2 * 3 * 4 + 5 * 4 + 2 * 4) + 1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(tmp_path / "d", verify="never").transitions


VIEW_SPEC = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=True, n_actions=4)


def with_concatenated_state(td):
    td = td.clone()
    td.set(schema.STATE, td.get(schema.OBS).flatten(1).clone())
    td.set(schema.NEXT_STATE, td.get(schema.NEXT_OBS).flatten(1).clone())
    return td


def test_a_state_that_is_the_observations_concatenated_is_stored_as_their_view(tmp_path):
    td = with_concatenated_state(episodes_of([5, 7, 3]))
    ds = write_dataset(tmp_path / "d", td, {"spec": VIEW_SPEC})
    meta = json.loads((tmp_path / "d" / "metadata.json").read_text())
    assert meta["views"] == {"state": {"of": "agents.observation", "shape": [6]}}
    assert "state" not in meta["arrays"] and not (tmp_path / "d" / "arrays" / "state.bin").exists()
    ds = load_dataset(tmp_path / "d", verify="always")
    assert_same_contract(ds.transitions, td)
    index = torch.tensor([14, 4, 0, 5, 11])
    assert_same_contract(ds.rows(index), td[index])
    assert schema.STATE not in ds.stored.keys(True, True)  # the page-cache warmer reads each file once
    assert ds.arrays.get(schema.STATE).filename == ds.arrays.get(schema.OBS).filename
    # A loaded dataset goes to DDP ranks by pickling (spawn): the view must travel as its file.
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing as _torch_multiprocessing  # noqa: F401  (registers torch's reductions, as spawn does)

    again = pickle.loads(ForkingPickler.dumps(ds.arrays))
    assert torch.equal(again.get(schema.STATE), td.get(schema.STATE))
    # An accelerator's copy (data.device=accelerator) copies the file once: the state's source and
    # rows become views of the observations' copy.
    assert ds.next_sources[schema.NEXT_STATE].data_ptr() != ds.next_sources[schema.NEXT_OBS].data_ptr()
    arrays, sources, steps = _on_device(ds.arrays, ds.next_sources, ds.next_steps, "cpu")
    assert sources[schema.NEXT_STATE].data_ptr() == sources[schema.NEXT_OBS].data_ptr()
    assert arrays.get(schema.STATE).data_ptr() == sources[schema.NEXT_OBS].data_ptr()
    assert arrays.get(schema.STATE).shape == ds.arrays.get(schema.STATE).shape
    assert_same_contract(RowGather(arrays, sources, steps)(index), td[index])


@pytest.mark.parametrize("where", ["a row", "a final row's next state"])
def test_a_state_that_differs_anywhere_gets_its_own_file(tmp_path, where):
    td = with_concatenated_state(episodes_of([5, 7, 3]))
    if where == "a row":
        td.get(schema.STATE)[6, 2] += 1.0
    else:  # row 4 ends the first episode: its next state is stored among the final rows
        td.get(schema.NEXT_STATE)[4, 0] += 1.0
    write_dataset(tmp_path / "d", td, {"spec": VIEW_SPEC})
    meta = json.loads((tmp_path / "d" / "metadata.json").read_text())
    assert "views" not in meta and "state" in meta["arrays"]
    assert_same_contract(load_dataset(tmp_path / "d", verify="always").transitions, td)


@pytest.mark.parametrize("damage", ["missing_source", "wrong_shape", "not_a_candidate", "also_a_file", "not_a_dict"])
def test_damaged_views_are_refused(tmp_path, damage):
    write_dataset(tmp_path / "d", with_concatenated_state(episodes_of([3, 4])), {"spec": VIEW_SPEC})
    meta_file = tmp_path / "d" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    if damage == "missing_source":
        meta["views"]["state"]["of"] = "agents.nothing"
    elif damage == "wrong_shape":
        meta["views"]["state"]["shape"] = [7]
    elif damage == "not_a_candidate":
        meta["views"]["episode"] = {"of": "agents.observation", "shape": []}
    elif damage == "also_a_file":
        meta["arrays"]["state"] = dict(meta["arrays"]["episode"])
    else:
        meta["views"] = ["state"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="view"):
        load_dataset(tmp_path / "d", verify="never")
