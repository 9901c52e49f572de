"""The DataModule: a TorchRL replay buffer over a memory-mapped dataset, seeded per rank.

The batch for iteration k on rank r is a pure function of (seed, r, k): its generator is seeded
from that triple. Resuming therefore needs no sampler state beyond the iteration counter, and
Lightning's one-batch prefetch cannot shift the stream. Under DDP every rank maps the same
files (shared page cache) and draws its own batches. Because the stream is known in advance,
background threads fetch the next ``prefetch`` batches while the current step computes
(data/prefetch.py), which hides the page faults of a dataset larger than the page cache.
"""

from __future__ import annotations

import functools
import sys
import threading

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset
from torchrl.data import ReplayBuffer, TensorStorage
from torchrl.data.replay_buffers import RandomSampler

from lightning_marl.data import schema
from lightning_marl.data.dataset import Dataset
from lightning_marl.data.gather import RowGather
from lightning_marl.data.page_cache import PageCacheWarmer, should_warm, warm_page_cache_choice
from lightning_marl.data.prefetch import prefetched
from lightning_marl.errors import ConfigError, DatasetError


def _identity(batch):
    return batch


def sample_seed(seed: int, rank: int, iteration: int) -> int:
    """A 63-bit seed that depends on every element of (seed, rank, iteration)."""
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(2, np.uint64)[0] >> np.uint64(1))


SEED_BLOCK = 64


@functools.lru_cache(maxsize=16)
def _seed_block(seed: int, rank: int, block: int) -> tuple[int, ...]:
    start = block * SEED_BLOCK
    return tuple(sample_seed(seed, rank, i) for i in range(start, start + SEED_BLOCK))


def batch_seed(seed: int, rank: int, iteration: int) -> int:
    """``sample_seed(seed, rank, iteration)`` for a batch stream, which asks for one iteration after
    the other: computed ``SEED_BLOCK`` iterations at a time. numpy's SeedSequence takes ~6 µs a
    call in a tight loop but ~45 µs between two training steps (measured inside OMIGA's loop),
    its code and data having left the caches meanwhile.

    Example:
        >>> batch_seed(0, 1, 70) == sample_seed(0, 1, 70)
        True
    """
    return _seed_block(seed, rank, iteration // SEED_BLOCK)[iteration % SEED_BLOCK]


_THREAD_GENERATORS = threading.local()


def thread_generator(device) -> torch.Generator:
    """This thread's reusable generator on ``device``, to be seeded by the caller (``manual_seed``
    resets it completely: the same draws as a new generator, without creating one per batch)."""
    generators = _THREAD_GENERATORS.__dict__.setdefault("by_device", {})
    key = str(device)
    if key not in generators:
        generators[key] = torch.Generator(device=device)
    return generators[key]


class EpisodeSlices:
    """Vectorised sampling of [B, T] slices of consecutive steps of one episode, padded at its end.

    An episode is a run of consecutive rows with the same ``episode`` id, also cut after a done
    row (rows of an episode stored consecutively and in time order, as collectors and importers
    write them). A slice never crosses episodes: positions past the episode's end repeat its
    last step and are marked False in the mask. A window of T steps is drawn uniformly among the
    L + T - 1 windows that overlap an episode of L steps (episodes drawn in proportion to
    L + T - 1), so every step of the dataset lies in a sampled window with the same probability,
    as in the feed-forward sampler (the expected loss weights every transition equally). A window
    that begins before the episode's first step is shifted to start there (a zero hidden state
    is then exact, as at execution) and the steps it shifts in are masked out like padding: the
    mask is True exactly on the window's steps. Short episodes (L < T) are kept, padded.

    Example:
        >>> from tensordict import TensorDict
        >>> done = torch.tensor([False, False, True, False, True]).unsqueeze(-1)
        >>> td = TensorDict({"episode": torch.tensor([0, 0, 0, 1, 1]), ("next", "done"): done}, [5])
        >>> slices = EpisodeSlices(td, slice_len=4)
        >>> index, mask, is_init = slices.sample_index(3, torch.Generator().manual_seed(0))
        >>> index.shape, bool((index[:, 1:] >= index[:, :-1]).all())
        (torch.Size([3, 4]), True)
        >>> slices.sample(RowGather(td), 3, torch.Generator().manual_seed(0)).batch_size
        torch.Size([3, 4])
    """

    def __init__(self, transitions, slice_len: int, device="cpu"):
        if slice_len < 1:
            raise DatasetError(f"slice_len must be >= 1 to sample episode slices, got {slice_len}")
        n = transitions.shape[0]
        if n == 0:
            raise DatasetError("cannot sample episode slices from an empty dataset")
        episode = transitions.get(schema.EPISODE).reshape(n).to(device)
        done = transitions.get(schema.DONE).reshape(n).to(device)
        first = torch.ones(n, dtype=torch.bool, device=device)
        first[1:] = (episode[1:] != episode[:-1]) | done[:-1]
        self.slice_len = slice_len
        self.starts = first.nonzero().squeeze(-1)
        self.ends = torch.cat([self.starts[1:], torch.tensor([n], device=device)])
        self.windows = (self.ends - self.starts) + slice_len - 1
        self.cumulative = self.windows.cumsum(0)
        self.steps = torch.arange(slice_len, device=device)

    @property
    def n_episodes(self) -> int:
        return len(self.starts)

    @property
    def n_windows(self) -> int:
        """How many distinct windows there are (the sum over episodes of L + T - 1)."""
        return int(self.cumulative[-1])

    def sample_index(self, batch_size: int, generator: torch.Generator):
        """Row indices [B, T] of ``batch_size`` uniformly drawn windows, their mask and is_init [B, T]."""
        window = torch.randint(self.n_windows, (batch_size,), generator=generator, device=self.cumulative.device)
        return self.window_rows(window)

    def window_rows(self, window: torch.Tensor):
        """Row indices [B, T], mask [B, T] and is_init [B, T] of windows numbered in [0, n_windows)."""
        episode = torch.searchsorted(self.cumulative, window, right=True)
        offset = window - (self.cumulative[episode] - self.windows[episode])
        first = self.starts[episode] + offset - (self.slice_len - 1)  # the window's first row (may precede the episode)
        start = torch.maximum(first, self.starts[episode])
        rows = start.unsqueeze(-1) + self.steps  # [B, T]
        end = self.ends[episode].unsqueeze(-1)
        mask = (rows < end) & (rows < (first + self.slice_len).unsqueeze(-1))
        is_init = rows == self.starts[episode].unsqueeze(-1)
        return torch.minimum(rows, end - 1), mask, is_init

    def sample(self, gather: RowGather, batch_size: int, generator: torch.Generator):
        """A TensorDict [B, T] of slices of the transitions behind ``gather`` with "mask" and "is_init"."""
        index, mask, is_init = self.sample_index(batch_size, generator)
        index = index.reshape(-1)
        if gather.device is not None:
            index = index.to(gather.device)
        batch = gather(index).reshape(batch_size, self.slice_len)
        batch.set(schema.MASK, mask.to(batch.device))
        batch.set(schema.IS_INIT, is_init.to(batch.device))
        return batch


def group_end(start: int, size: int, periods=(), last: int | None = None) -> int:
    """Where the group of iterations that begins at ``start`` ends (exclusive): after at most
    ``size`` iterations, and at every multiple of a period and at ``last``, so that what acts at
    those iterations at the end of a Lightning batch (checkpoints, evaluations, logs) sees a group
    end exactly there.

    Example:
        >>> [group_end(start, 8, periods=[10], last=23) for start in (0, 8, 10, 16, 20)]
        [8, 10, 18, 20, 23]
    """
    end = start + size
    for period in periods:
        end = min(end, (start // period + 1) * period)
    if last is not None and start < last:
        end = min(end, last)
    return end


def iteration_periods(trainer) -> list[int]:
    """The periods (in iterations) at whose multiples the module or a callback acts at the end of
    a Lightning batch: the module's ``log_every`` and every callback's ``iteration_periods``."""
    module = trainer.lightning_module
    periods = [getattr(module, "log_every", 0)]
    for callback in trainer.callbacks:
        declared = getattr(callback, "iteration_periods", None)
        if declared is not None:
            periods.extend(declared(trainer))
    return sorted({int(p) for p in periods if p and p > 0})


class _BatchStream(IterableDataset):
    """The batches of iterations k, k+1, ... (endless); with ``iterations_per_batch`` > 1, lists
    of the batches of consecutive iterations, cut by ``group_end``."""

    def __init__(self, datamodule: "OfflineDataModule"):
        self.datamodule = datamodule

    def _start(self) -> int:
        trainer = self.datamodule.trainer
        return trainer.lightning_module.iteration if trainer is not None else 0

    def __iter__(self):
        # Endless on purpose: the module stops the trainer when its iteration budget is spent, so
        # a resumed run continues the same stream mid-epoch (Lightning then prefetches one batch).
        datamodule = self.datamodule
        start = self._start()
        batches = prefetched(datamodule.sample, start, depth=datamodule.prefetch)
        size = datamodule.iterations_per_batch
        if size <= 1:
            yield from batches
            return
        trainer = datamodule.trainer
        periods = iteration_periods(trainer) if trainer is not None else []
        last = trainer.lightning_module.config.steps if trainer is not None else None
        try:
            while True:
                end = group_end(start, size, periods, last)
                yield [next(batches) for _ in range(end - start)]
                start = end
        finally:
            batches.close()  # stops prefetch threads


def _on_device(transitions, next_sources: dict, next_steps, device):
    """The per-row arrays, next-step sources and next steps copied to ``device``, each stored file
    once: an array over storage already copied (the first T rows of a next-step source, or a state
    that maps the observation file again as its view) becomes a view of that copy. The sources,
    whole files, are copied first."""
    copies = {}  # storage (a file, or an in-memory allocation) -> its device copy

    def move(array: torch.Tensor) -> torch.Tensor:
        storage = getattr(array, "filename", None) or array.untyped_storage().data_ptr()
        copy = copies.get(storage)
        if copy is not None and copy.dtype == array.dtype and array.storage_offset() == 0 \
                and array.is_contiguous() and array.numel() <= copy.numel():
            return copy.view(-1)[:array.numel()].view(array.shape)
        moved = array.to(device)
        if array.storage_offset() == 0 and array.is_contiguous():
            copies.setdefault(storage, moved)
        return moved

    sources = {key: move(source) for key, source in next_sources.items()}
    return transitions.apply(move, device=device), sources, next_steps.to(device) if next_steps is not None else None


_WARMING_LOCK = threading.Lock()  # module-level: a datamodule is pickled for DDP spawn
_SETUP_LOCK = threading.Lock()


class OfflineDataModule(LightningDataModule):
    """Batches of the contract sampled uniformly with replacement from a dataset.

    With ``slice_len`` (or, inside a Trainer, a module whose ``slice_len`` is set: recurrent
    methods) a batch is ``batch_size`` slices [B, T] (``EpisodeSlices``). ``prepare`` (or the
    module's ``prepare_transitions``) runs once on the transitions before sampling, e.g. ICQ's
    next joint action. With ``iterations_per_batch`` k > 1 the dataloader yields lists of up to k
    consecutive iterations' batches (the module runs them in one ``training_step``: Lightning's
    per-batch work, ~0.3 ms on the project's CPUs, is paid once per list); a list ends at every
    multiple of the periods the module and the callbacks declare (``iteration_periods``).
    ``warm_page_cache`` (``auto``, the default: when it fits in half the available memory;
    ``true``: always) reads the dataset in, in file order, before the first batch
    (``page_cache.PageCacheWarmer``).

    Example:
        >>> dm = OfflineDataModule(load_dataset("path"), batch_size=128)  # doctest: +SKIP
        >>> dm.setup("fit"); dm.sample(0).batch_size                                   # doctest: +SKIP
        torch.Size([128])
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, device: str = "cpu", prefetch: int = 0,
                 slice_len: int | None = None, prepare=None, iterations_per_batch: int = 1,
                 warm_page_cache: str = "auto"):
        super().__init__()
        self.warm_page_cache = warm_page_cache_choice(warm_page_cache)
        self.page_cache: PageCacheWarmer | None = None
        if iterations_per_batch < 1:
            raise ConfigError(f"iterations_per_batch must be >= 1, got {iterations_per_batch}")
        self.iterations_per_batch = iterations_per_batch
        self.slice_len = slice_len
        self.prepare = prepare
        self.slices = None
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self._prefetch = prefetch
        self.buffer = None
        self._storage_device = "cpu"

    @property
    def prefetch(self) -> int:
        """Batches fetched ahead by background threads (none when the storage is on an accelerator)."""
        return self._prefetch if str(self._storage_device) == "cpu" else 0

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def setup(self, stage: str | None = None) -> None:
        if self.buffer is not None:
            return
        with _SETUP_LOCK:  # prefetch threads of a datamodule nobody set up may all call it at once
            if self.buffer is None:
                self._setup()

    def _setup(self) -> None:
        dataset = self.dataset
        transitions = dataset.arrays  # the next-step keys stored once are gathered from next_sources
        next_sources, next_steps = dataset.next_sources, dataset.next_steps
        module = self.trainer.lightning_module if self.trainer is not None else None
        prepare = self.prepare or getattr(module, "prepare_transitions", None)
        if prepare is not None:
            transitions = prepare(transitions)
        if self.slice_len is None:
            self.slice_len = getattr(module, "slice_len", None)
        storage_device = "cpu"
        if self.device == "accelerator" and self.trainer is not None:
            storage_device = self.trainer.strategy.root_device
            transitions, next_sources, next_steps = _on_device(transitions, next_sources, next_steps, storage_device)
        self._storage_device = storage_device
        if storage_device == "cpu" and should_warm(self.warm_page_cache, dataset.stored):
            self.page_cache = PageCacheWarmer(dataset.stored)
        if next_steps is not None:
            next_steps.table  # built once here, before prefetch threads share it
        self._gather = RowGather(transitions, next_sources, next_steps)
        if self.slice_len:
            self.slices = EpisodeSlices(transitions, self.slice_len, storage_device)
        self.buffer = ReplayBuffer(  # last: a set buffer means a finished setup
            storage=TensorStorage(transitions, device=storage_device),
            sampler=RandomSampler(),
            batch_size=self.batch_size,
        )

    def teardown(self, stage: str | None = None) -> None:
        if self.page_cache is not None:
            self.page_cache.stop()

    def wait_for_page_cache(self) -> None:
        """Wait for the page-cache warmer (if any) before the first batch or any other random reads
        (plugin pretraining calls it too). Uniform batches touch the whole dataset within a few
        batches anyway, and waiting keeps their random reads from interleaving with the warmer's
        in-order ones. (Not measured against sampling beside this warmer; beside an earlier one
        that only mapped the pages, the first 2000 steps took 5.5 s more than pre-sampled ones,
        against 8.9 s with no warmer.)"""
        with _WARMING_LOCK:  # prefetch threads may all wait for the first batches
            warmer = self.page_cache
            if warmer is None or not warmer.running:
                return
            loud = self.rank == 0 and warmer.total >= 1 << 30
            if loud:
                print(f"reading the dataset's {warmer.total / 1e9:.1f} GB into the page cache "
                      "(data.warm_page_cache=false to skip) ...", file=sys.stderr, flush=True)
            warmer.join()
            if loud and warmer.done:
                print(f"  read in {warmer.seconds:.1f} s", file=sys.stderr, flush=True)

    def sample_for_rank(self, rank: int, iteration: int):
        """The batch rank ``rank`` draws at ``iteration`` (TensorDict [batch_size]): rows drawn
        uniformly with replacement by a generator seeded with ``sample_seed(seed, rank,
        iteration)``. Thread-safe: each thread seeds its own generator."""
        self.setup()
        if self.page_cache is not None and self.page_cache.running:
            self.wait_for_page_cache()
        generator = thread_generator(self._storage_device)
        generator.manual_seed(batch_seed(self.seed, rank, iteration))
        if self.slices is not None:
            return self.slices.sample(self._gather, self.batch_size, generator)
        index = torch.randint(len(self.buffer), (self.batch_size,), generator=generator, device=self._storage_device)
        return self._gather(index)  # = self.buffer.storage.get(index), at less than half the cost

    def rows(self, index: torch.Tensor):
        """Rows ``index`` of the (prepared) dataset as a batch holds them: every key of the contract."""
        self.setup()
        return self._gather(index.to(self._storage_device))

    def sample(self, iteration: int):
        return self.sample_for_rank(self.rank, iteration)

    def train_dataloader(self):
        return DataLoader(_BatchStream(self), batch_size=None, collate_fn=_identity, num_workers=0)
