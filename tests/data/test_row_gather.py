"""The datamodule's batches: RowGather equals TensorDict indexing of the whole contract on real datasets."""

import pytest
import torch

from lightning_marl.data import gather as gather_module
from lightning_marl.data import schema
from lightning_marl.data.datamodule import OfflineDataModule, RowGather
from lightning_marl.data.dataset import load_dataset


@pytest.mark.parametrize("unchecked", [True, False], ids=["unchecked-constructor", "checked-fallback"])
def test_row_gather_equals_the_storages_indexing_on_memory_mapped_datasets(climbing_dataset, continuous_dataset,
                                                                           unchecked, monkeypatch):
    if not unchecked:  # what runs with a tensordict that lacks the private unchecked constructor
        monkeypatch.setattr(gather_module, "_NEW_UNSAFE", None)
    for dataset in (climbing_dataset, continuous_dataset):  # written with write_dataset: memory-mapped
        datamodule = OfflineDataModule(load_dataset(dataset.path), batch_size=16, seed=0)
        datamodule.setup()
        index = torch.randint(len(datamodule.buffer), (16,), generator=torch.Generator().manual_seed(1))
        # The dataset stores next-step keys once; the batch must hold the same rows as indexing all of them.
        ours, theirs = datamodule.rows(index), datamodule.dataset.transitions[index]
        assert datamodule.dataset.next_sources  # the datasets exercise the next-step gather
        assert set(ours.keys(True, True)) == set(theirs.keys(True, True)) and ours.batch_size == theirs.batch_size
        assert ours.device == torch.device("cpu")  # named: Lightning then hands it over without a rebuild
        for key in theirs.keys(True, True):
            assert ours.get(key).dtype == theirs.get(key).dtype and torch.equal(ours.get(key), theirs.get(key)), key
        for key in theirs.keys(True):  # nested TensorDicts keep the batch size (and the device) too
            assert ours.get(key).shape[:1] == theirs.get(key).shape[:1], key
            assert ours.get(key).device == torch.device("cpu"), key
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


def test_the_batch_of_an_iteration_is_fixed_by_seed_rank_and_iteration_alone(climbing_dataset):
    """Resumes and DDP ranks rely on it: batch k is the rows torch.randint draws from a generator
    seeded with sample_seed(seed, rank, k), whatever was sampled before, on whichever thread (the
    seeds are computed in blocks and each thread reuses its generator)."""
    import threading

    from lightning_marl.data.datamodule import SEED_BLOCK, batch_seed, sample_seed

    datamodule = OfflineDataModule(load_dataset(climbing_dataset.path), batch_size=8, seed=5)
    datamodule.setup()
    rows = len(datamodule.buffer)

    def expected(rank, iteration):
        generator = torch.Generator().manual_seed(sample_seed(5, rank, iteration))
        return RowGather(datamodule.dataset.transitions)(torch.randint(rows, (8,), generator=generator))

    iterations = [3, 0, SEED_BLOCK - 1, SEED_BLOCK, 10 * SEED_BLOCK + 7, 3]
    for rank in (0, 1):
        for iteration in iterations:
            assert (datamodule.sample_for_rank(rank, iteration) == expected(rank, iteration)).all(), (rank, iteration)
    from_thread = []
    thread = threading.Thread(target=lambda: from_thread.extend(datamodule.sample_for_rank(1, i) for i in iterations))
    thread.start()
    thread.join()
    for batch, iteration in zip(from_thread, iterations):
        assert (batch == expected(1, iteration)).all(), iteration
    assert [batch_seed(7, 2, i) for i in range(2 * SEED_BLOCK + 3)] == [sample_seed(7, 2, i) for i in range(2 * SEED_BLOCK + 3)]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_grouped_streams_hold_the_batches_of_consecutive_iterations(climbing_dataset, prefetch):
    from lightning_marl.data.datamodule import _BatchStream

    datamodule = OfflineDataModule(load_dataset(climbing_dataset.path), batch_size=8, seed=2, prefetch=prefetch,
                                   iterations_per_batch=3)
    datamodule.setup()
    stream = iter(_BatchStream(datamodule))
    groups = [next(stream) for _ in range(3)]
    stream.close()
    assert [len(group) for group in groups] == [3, 3, 3]
    for k, batch in enumerate(batch for group in groups for batch in group):
        assert (batch == datamodule.sample(k)).all(), k


def test_threads_that_sample_from_a_datamodule_nobody_set_up_wait_for_one_whole_setup(climbing_dataset, monkeypatch):
    """Prefetch threads may be the first to sample (benchmarks stream without a Trainer): none may see
    a half-built datamodule, and the setup runs once."""
    import threading
    import time

    from lightning_marl.data import datamodule as datamodule_module

    built = []
    real = datamodule_module.RowGather

    def slow_gather(*args, **kwargs):  # widens the window between the setup's first and last assignment
        built.append(1)
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(datamodule_module, "RowGather", slow_gather)
    datamodule = OfflineDataModule(load_dataset(climbing_dataset.path), batch_size=8, seed=1, slice_len=3)
    results, errors = {}, []

    def draw(iteration):
        try:
            results[iteration] = datamodule.sample(iteration)
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(built) == 1
    assert all(batch.batch_size == torch.Size([8, 3]) for batch in results.values())  # slices, never rows
