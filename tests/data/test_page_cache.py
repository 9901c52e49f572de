"""Warming the page cache reads every page of the dataset in the background and changes no batch."""

import logging
import os
import sys
import threading

import pytest
import torch

from lightning_marl.config import load_config
from lightning_marl.data import page_cache
from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.data.dataset import load_dataset
from lightning_marl.data.page_cache import PageCacheWarmer, mapped_arrays, should_warm, warm_page_cache_choice
from lightning_marl.errors import ConfigError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def resident_bytes(array) -> int:
    """Resident bytes of the mapping that holds ``array`` (Rss in /proc/self/smaps)."""
    address, inside = array.data_ptr(), False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                start, end = (int(part, 16) for part in fields[0].split("-"))
                inside = start <= address < end
            elif inside and fields[0] == "Rss:":
                return int(fields[1]) * 1024
    raise AssertionError("no mapping holds the array")


def pages(array) -> int:
    size = array.numel() * array.element_size()
    return -(-size // os.sysconf("SC_PAGE_SIZE")) * os.sysconf("SC_PAGE_SIZE")


@linux_only
def test_warming_maps_every_page_of_every_array(continuous_dataset):
    dataset = load_dataset(continuous_dataset.path, verify="never")  # a fresh mapping: nothing touched yet
    arrays = mapped_arrays(dataset.stored)
    assert len(arrays) == len(dataset.stored.keys(True, True))
    assert sum(resident_bytes(a) for a in arrays) < sum(pages(a) for a in arrays) / 4
    warmer = PageCacheWarmer(dataset.stored)
    warmer.join(timeout=60)
    assert warmer.done
    assert warmer.bytes == warmer.total == sum(a.numel() * a.element_size() for a in arrays)
    for array in arrays:
        assert resident_bytes(array) == pages(array)


def test_stop_ends_the_thread_after_the_slice_in_progress(continuous_dataset, monkeypatch):
    calls, started, release = [], threading.Event(), threading.Event()

    def slow_touch(array, begin, end):
        calls.append(end - begin)
        started.set()
        release.wait(10)

    monkeypatch.setattr(page_cache, "_touch", slow_touch)
    warmer = PageCacheWarmer(load_dataset(continuous_dataset.path, verify="never").stored)
    assert started.wait(10)
    threading.Timer(0.05, release.set).start()
    warmer.stop()
    assert len(calls) == 1 and not warmer.done and warmer.bytes == calls[0]


def test_a_failing_read_ends_the_thread_with_a_warning(continuous_dataset, monkeypatch, caplog):
    def failing(array, begin, end):
        raise RuntimeError("Cannot allocate memory")

    monkeypatch.setattr(page_cache, "_touch", failing)
    with caplog.at_level(logging.WARNING, logger="lightning_marl.data.page_cache"):
        warmer = PageCacheWarmer(load_dataset(continuous_dataset.path, verify="never").stored)
        warmer.join(timeout=10)
    assert not warmer.done and warmer.bytes == 0
    assert "warming the page cache stopped" in caplog.text and "Cannot allocate memory" in caplog.text


def test_auto_warms_what_fits_in_half_the_available_memory(continuous_dataset, monkeypatch):
    transitions = load_dataset(continuous_dataset.path, verify="never").stored
    total = sum(a.numel() * a.element_size() for a in mapped_arrays(transitions))
    for available, expected in ((2 * total, True), (2 * total - 2, False), (None, False)):
        monkeypatch.setattr(page_cache, "memory_available", lambda: available)
        assert should_warm("auto", transitions) is expected, available
    assert should_warm("true", transitions) and not should_warm(False, transitions) and should_warm(True, transitions)
    assert not should_warm("auto", transitions.apply(lambda x: x.clone()))  # in RAM: nothing to warm
    with pytest.raises(ConfigError, match="must be auto, true or false, found 'yes please'"):
        warm_page_cache_choice("yes please")


def test_by_default_a_dataset_that_fits_in_half_the_available_memory_is_read_in(continuous_dataset, monkeypatch):
    assert load_config(None).data.warm_page_cache == "auto"  # what fit passes to the datamodule
    transitions = load_dataset(continuous_dataset.path, verify="never").stored
    total = sum(a.numel() * a.element_size() for a in mapped_arrays(transitions))
    for available, warmed in ((2 * total, True), (2 * total - 2, False)):
        monkeypatch.setattr(page_cache, "memory_available", lambda: available)
        dm = OfflineDataModule(load_dataset(continuous_dataset.path, verify="never"), 16)
        dm.setup()
        assert (dm.page_cache is not None) is warmed, available
        dm.teardown()


def test_the_datamodule_warms_on_setup_stops_on_teardown_and_samples_the_same(continuous_dataset):
    warmed = OfflineDataModule(load_dataset(continuous_dataset.path, verify="never"), 16, seed=4, warm_page_cache="true")
    plain = OfflineDataModule(load_dataset(continuous_dataset.path, verify="never"), 16, seed=4, warm_page_cache="false")
    warmed.setup()
    plain.setup()
    assert warmed.page_cache is not None and plain.page_cache is None
    for iteration in range(6):
        a, b = warmed.sample(iteration), plain.sample(iteration)
        assert all(torch.equal(a[key], b[key]) for key in a.keys(True, True))
    warmed.teardown()
    assert not warmed.page_cache.running


def test_the_first_batch_waits_for_the_warmer(continuous_dataset, monkeypatch):
    release, populated = threading.Event(), []

    def slow_touch(array, begin, end):
        release.wait(10)
        populated.append(end - begin)

    monkeypatch.setattr(page_cache, "_touch", slow_touch)
    dm = OfflineDataModule(load_dataset(continuous_dataset.path, verify="never"), 16, seed=4, warm_page_cache="true")
    dm.setup()
    assert not dm.page_cache.done
    threading.Timer(0.1, release.set).start()
    dm.sample(0)
    assert dm.page_cache.done and sum(populated) == dm.page_cache.total
    dm.teardown()


def test_waiting_is_a_no_op_without_a_warmer_and_finishes_one_in_progress(continuous_dataset, monkeypatch):
    plain = OfflineDataModule(load_dataset(continuous_dataset.path, verify="never"), 16, warm_page_cache="false")
    plain.setup()
    plain.wait_for_page_cache()
    assert plain.page_cache is None
    release = threading.Event()
    monkeypatch.setattr(page_cache, "_touch", lambda array, begin, end: release.wait(10))
    warmed = OfflineDataModule(load_dataset(continuous_dataset.path, verify="never"), 16, warm_page_cache="true")
    warmed.setup()
    threading.Timer(0.1, release.set).start()
    warmed.wait_for_page_cache()  # what on_train_start calls before plugins pretrain on random rows
    assert warmed.page_cache.done
