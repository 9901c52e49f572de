import json

import pytest
import torch

from lightning_marl.data import schema
from lightning_marl.data.dataset import load_dataset, normalised_score, verify_dataset, write_dataset
from lightning_marl.errors import DatasetError


def test_round_trip_keeps_every_array_and_metadata(tmp_path, continuous_transitions):
    td, spec = continuous_transitions
    ds = write_dataset(tmp_path / "d", td, {"spec": spec, "quality": "random", "reference_returns": {"random": -1.0, "expert": 3.0}})
    loaded = load_dataset(tmp_path / "d", verify="always")
    for key in td.keys(include_nested=True, leaves_only=True):
        assert torch.equal(loaded.transitions.get(key), td.get(key)), key
    assert loaded.spec == spec
    meta = loaded.metadata
    assert meta["n_transitions"] == 64 and meta["n_episodes"] == 8
    per_episode = td.get(schema.REWARD)[:, 0].reshape(8, 8).sum(1).double()
    assert meta["episode_returns"]["mean"] == pytest.approx(per_episode.mean().item())
    assert meta["episode_returns"]["max"] == pytest.approx(per_episode.max().item())
    assert ds.normalised_score(1.0) == pytest.approx(50.0)
    assert normalised_score(1.0, {"random": None, "expert": 3.0}) is None


def test_loading_maps_files_instead_of_reading(continuous_dataset):
    ds = load_dataset(continuous_dataset.path, verify="never")
    value = ds.transitions.get(schema.OBS)
    assert type(value).__name__ == "MemoryMappedTensor" and value.filename.endswith(".bin")


def test_truncated_file_is_refused_before_use(tmp_path, continuous_transitions):
    td, spec = continuous_transitions
    write_dataset(tmp_path / "d", td, {"spec": spec})
    file = tmp_path / "d" / "arrays" / "next" / "reward.bin"
    file.write_bytes(file.read_bytes()[:-4])
    with pytest.raises(DatasetError, match=r"next\.reward.*truncated"):
        load_dataset(tmp_path / "d", verify="never")


def test_changed_bytes_fail_the_checksum(tmp_path, continuous_transitions):
    td, spec = continuous_transitions
    write_dataset(tmp_path / "d", td, {"spec": spec})
    file = tmp_path / "d" / "arrays" / "agents" / "observation.bin"
    data = bytearray(file.read_bytes())
    data[10] ^= 0xFF
    file.write_bytes(bytes(data))
    load_dataset(tmp_path / "d", verify="never")  # sizes still fine
    with pytest.raises(DatasetError, match="checksum mismatch.*agents.observation"):
        load_dataset(tmp_path / "d")  # auto: small datasets are fully verified
    with pytest.raises(DatasetError, match="checksum"):
        verify_dataset(tmp_path / "d")


def test_corrupt_or_missing_metadata(tmp_path, continuous_transitions):
    td, spec = continuous_transitions
    write_dataset(tmp_path / "d", td, {"spec": spec})
    meta_file = tmp_path / "d" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(DatasetError, match="schema version 99"):
        load_dataset(tmp_path / "d")
    meta_file.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path / "d")
    meta_file.unlink()
    with pytest.raises(DatasetError, match="no metadata.json"):
        load_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match="no dataset at"):
        load_dataset(tmp_path / "missing")


def test_invalid_transitions_are_never_written(tmp_path, continuous_transitions):
    td, spec = continuous_transitions
    broken = td.clone()
    broken.del_(schema.REWARD)
    with pytest.raises(DatasetError, match="next.reward"):
        write_dataset(tmp_path / "d", broken, {"spec": spec})
    assert list(tmp_path.iterdir()) == []


def test_crash_mid_write_leaves_old_dataset_intact(tmp_path, continuous_transitions, monkeypatch):
    td, spec = continuous_transitions
    write_dataset(tmp_path / "d", td, {"spec": spec, "quality": "old"})
    import lightning_marl.data.dataset as dataset_module

    calls = {"n": 0}
    real = dataset_module._sha256

    def crash_on_third(path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real(path)

    monkeypatch.setattr(dataset_module, "_sha256", crash_on_third)
    with pytest.raises(OSError, match="simulated"):
        write_dataset(tmp_path / "d", td, {"spec": spec, "quality": "new"}, overwrite=True)
    monkeypatch.undo()
    assert load_dataset(tmp_path / "d", verify="always").metadata["quality"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary directory left behind
    with pytest.raises(DatasetError, match="already exists"):
        write_dataset(tmp_path / "d", td, {"spec": spec})
