"""The datamodule's batches: RowGather equals TorchRL's storage indexing on real datasets."""

import torch

from lightning_marl.data import schema
from lightning_marl.data.datamodule import OfflineDataModule, RowGather
from lightning_marl.data.dataset import load_dataset


def test_row_gather_equals_the_storages_indexing_on_memory_mapped_datasets(climbing_dataset, continuous_dataset):
    for dataset in (climbing_dataset, continuous_dataset):  # written with write_dataset: memory-mapped
        datamodule = OfflineDataModule(load_dataset(dataset.path), batch_size=16, seed=0)
        datamodule.setup()
        index = torch.randint(len(datamodule.buffer), (16,), generator=torch.Generator().manual_seed(1))
        ours, theirs = RowGather(datamodule.dataset.transitions)(index), datamodule.buffer.storage.get(index)
        assert set(ours.keys(True, True)) == set(theirs.keys(True, True)) and ours.batch_size == theirs.batch_size
        for key in theirs.keys(True, True):
            assert ours.get(key).dtype == theirs.get(key).dtype and torch.equal(ours.get(key), theirs.get(key)), key
        for key in theirs.keys(True):  # nested TensorDicts keep the batch size too
            assert ours.get(key).shape[:1] == theirs.get(key).shape[:1], key
        # The batch stream draws through it, reproducibly per (seed, rank, iteration).
        assert (datamodule.sample(3) == datamodule.sample(3)).all()
        assert not (datamodule.sample(3) == datamodule.sample(4)).all()


def test_episode_slices_equal_indexing_the_tensordict_with_the_sampled_rows(climbing_dataset):
    from lightning_marl.data.datamodule import EpisodeSlices

    transitions = load_dataset(climbing_dataset.path).transitions
    slices = EpisodeSlices(transitions, slice_len=4)
    index, mask, is_init = slices.sample_index(8, torch.Generator().manual_seed(2))
    gathered = slices.sample(RowGather(transitions), 8, torch.Generator().manual_seed(2))
    direct = transitions[index.reshape(-1)].reshape(8, 4)
    assert gathered.batch_size == direct.batch_size == torch.Size([8, 4])
    assert (gathered.exclude(schema.MASK, schema.IS_INIT) == direct).all()
    assert torch.equal(gathered[schema.MASK], mask) and torch.equal(gathered[schema.IS_INIT], is_init)
