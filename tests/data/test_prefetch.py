"""Prefetching keeps the batch stream exactly what inline sampling gives, in order."""

import threading
import time

import torch

from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.data.prefetch import prefetched


def test_prefetched_stream_equals_inline_sampling(continuous_dataset):
    dm = OfflineDataModule(continuous_dataset, batch_size=16, seed=3, prefetch=4)
    stream = prefetched(dm.sample, start=5, depth=4, workers=3)
    for iteration in range(5, 25):
        batch = next(stream)
        expected = dm.sample_for_rank(0, iteration)
        assert torch.equal(batch["agents", "observation"], expected["agents", "observation"]), iteration
        assert torch.equal(batch["episode"], expected["episode"])
    stream.close()
    assert len(dm.sample(0)) == 16 and dm.sample(0)["episode"].max() < len(continuous_dataset)


def test_results_come_in_iteration_order_and_fetches_overlap():
    active, peak, lock = [0], [0], threading.Lock()

    def slow_fetch(k):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02 if k % 2 else 0.005)  # odd iterations finish last
        with lock:
            active[0] -= 1
        return k

    stream = prefetched(slow_fetch, start=0, depth=4, workers=4)
    assert [next(stream) for _ in range(12)] == list(range(12))
    stream.close()
    assert peak[0] >= 2, "no two fetches were ever in flight together"


def test_depth_zero_fetches_inline():
    calls = []
    stream = prefetched(lambda k: calls.append(k) or k, start=0, depth=0)
    assert next(stream) == 0 and calls == [0]
