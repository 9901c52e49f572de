"""Reading a memory-mapped dataset into memory before training (config ``data.warm_page_cache``).

Uniform sampling touches every part of a dataset within a few batches. From a cold page cache
those touches are random reads that block the training step (10M transitions, 9 GB, on the
project's machines: the first 300 batches took 19-27 ms each), and after the kernel's readahead
has pulled the files in, batches stayed slower for the next ~10,000-20,000 with no page fault at
all: the first touch of each page by the CPU cost microseconds. ``madvise(MADV_POPULATE_READ)``,
which reads and maps every page without touching it, took 3.1 s for the 9 GB and left batches
slow (0.46 ms, 0.18 ms at batches 4000-8000; warm 0.09). So the warmer reads one byte of every page through
the mapping, in file order (the kernel's readahead then reads big sequential chunks), and the
datamodule waits for it before the first batch. After it, batches cost what they cost warm.

On the project's virtual machines the first touches cost what the machine's memory did before:
the warm-up of 9 GB took 3.7-4.3 s (1.2-1.6 s of CPU) right after runs that had read the files
in order, and 8.4-11 s (6.9-8.0 s of CPU) right after runs that had sampled them cold. These
guests report freed memory to the host (virtio-balloon free page reporting, negotiated by their
balloon device), which fits: memory freed by dropping the page cache is backed by the host
again only when next touched (not established further). At 9 GB the warm-up made no difference
over the first 20,000 steps of fresh processes (14.3 s of extra time with and without, medians
of 3). At 2.6 GB (the same 10M transitions with next-step fields stored once and the state a
view of the observations) it reads in 1.0-3.5 s and halved a cold start's extra time (5.8 s
against 10.6 s, medians of 10 runs, ``benchmarks/cold_start.py``) while costing a warm start
nothing measurable, so ``auto`` is the default.

Nothing changes what is sampled: the warmer only reads. ``auto`` warms a dataset that fits in
half the memory available (a larger one would evict its own pages); an accelerator copy of the
data (``data.device=accelerator``) needs none.
"""

from __future__ import annotations

import logging
import mmap
import threading
import time

import torch
from tensordict.memmap import MemoryMappedTensor

from lightning_marl.errors import ConfigError

log = logging.getLogger(__name__)

SLICES = 64  # each array is read in this many slices, array after array within a slice
CHOICES = ("auto", "true", "false")


def warm_page_cache_choice(value) -> str:
    """The config value as one of ``auto``, ``true``, ``false`` (YAML booleans accepted)."""
    text = str(value).strip().lower()
    if text not in CHOICES:
        raise ConfigError(f"data.warm_page_cache must be auto, true or false, found {value!r}")
    return text


def memory_available() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def mapped_arrays(transitions) -> list[MemoryMappedTensor]:
    """The memory-mapped leaves of a TensorDict (arrays already in RAM need no warming)."""
    return [leaf for leaf in transitions.values(include_nested=True, leaves_only=True)
            if isinstance(leaf, MemoryMappedTensor) and leaf.filename is not None and leaf.numel() > 0]


def should_warm(choice: str, transitions) -> bool:
    """``true``/``false`` as given; ``auto``: the mapped arrays fit in half the available memory."""
    choice = warm_page_cache_choice(choice)
    if choice != "auto":
        return choice == "true"
    available = memory_available()
    total = sum(array.nbytes for array in mapped_arrays(transitions))
    return available is not None and 0 < total <= available // 2


class PageCacheWarmer:
    """A daemon thread that reads every memory-mapped array of ``transitions`` into the page cache.

    The arrays are read in ``SLICES`` rounds, one slice of each array per round, so that all of
    them are equally far along at any moment (``stop`` ends it after the slice in progress).

    Example:
        >>> import tempfile
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"x": torch.arange(4096.0)}, [4096]).memmap(tempfile.mkdtemp())
        >>> warmer = PageCacheWarmer(td)
        >>> warmer.join(); warmer.bytes
        16384
    """

    def __init__(self, transitions):
        self.arrays = mapped_arrays(transitions)
        self.total = sum(array.nbytes for array in self.arrays)
        self.bytes = 0
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lightning_marl-page-cache", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        """Every page read."""
        return self.seconds is not None

    @property
    def running(self) -> bool:
        """Still reading (not done, stopped or failed)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop after the slice being read (at most one slice of one array)."""
        self._stop.set()
        self._thread.join()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            for index in range(SLICES):
                for array in self.arrays:
                    if self._stop.is_set():
                        return
                    begin, end = array.nbytes * index // SLICES, array.nbytes * (index + 1) // SLICES
                    if end > begin:
                        _touch(array, begin, end)
                        self.bytes += end - begin
        except (OSError, RuntimeError) as error:  # an array torch cannot read as bytes: training goes on unwarmed
            log.warning("warming the page cache stopped: %s", error)
            return
        self.seconds = time.perf_counter() - start
        log.info("page cache: %.2f GB of dataset pages read in %.1f s", self.bytes / 1e9, self.seconds)


def _touch(array: torch.Tensor, begin: int, end: int) -> None:
    """Read one byte of every page of bytes [begin, end) of a contiguous array (a strided sum: one
    small kernel that releases the GIL; each page read faults it in, in order)."""
    array.reshape(-1).view(torch.uint8)[begin:end:mmap.PAGESIZE].sum()
