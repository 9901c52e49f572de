"""The DataModule: a TorchRL replay buffer over a memory-mapped dataset, seeded per rank.

The batch for iteration k on rank r is a pure function of (seed, r, k): its generator is seeded
from that triple. Resuming therefore needs no sampler state beyond the iteration counter, and
Lightning's one-batch prefetch cannot shift the stream. Under DDP every rank maps the same
files (shared page cache) and draws its own batches.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset
from torchrl.data import ReplayBuffer, TensorStorage
from torchrl.data.replay_buffers import RandomSampler

from lightning_marl.data.dataset import Dataset


def _identity(batch):
    return batch


def sample_seed(seed: int, rank: int, iteration: int) -> int:
    """A 63-bit seed that depends on every element of (seed, rank, iteration)."""
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class _BatchStream(IterableDataset):
    def __init__(self, datamodule: "OfflineDataModule"):
        self.datamodule = datamodule

    def _start(self) -> int:
        trainer = self.datamodule.trainer
        return trainer.lightning_module.iteration if trainer is not None else 0

    def __iter__(self):
        # Endless on purpose: the module stops the trainer when its iteration budget is spent, so
        # a resumed run continues the same stream mid-epoch (Lightning then prefetches one batch).
        iteration = self._start()
        while True:
            yield self.datamodule.sample(iteration)
            iteration += 1


class OfflineDataModule(LightningDataModule):
    """Batches of the contract sampled uniformly with replacement from a dataset.

    Example:
        >>> dm = OfflineDataModule(load_dataset("path"), batch_size=128)  # doctest: +SKIP
        >>> dm.setup("fit"); dm.sample(0).batch_size                                   # doctest: +SKIP
        torch.Size([128])
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, device: str = "cpu"):
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.buffer = None
        self._generator = None

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def setup(self, stage: str | None = None) -> None:
        if self.buffer is not None:
            return
        transitions = self.dataset.transitions
        storage_device = "cpu"
        if self.device == "accelerator" and self.trainer is not None:
            storage_device = self.trainer.strategy.root_device
            transitions = transitions.to(storage_device)
        self._generator = torch.Generator(device=storage_device)
        self.buffer = ReplayBuffer(
            storage=TensorStorage(transitions, device=storage_device),
            sampler=RandomSampler(),
            batch_size=self.batch_size,
            generator=self._generator,
        )

    def sample_for_rank(self, rank: int, iteration: int):
        """The batch rank ``rank`` draws at ``iteration`` (TensorDict [batch_size])."""
        self.setup()
        self._generator.manual_seed(sample_seed(self.seed, rank, iteration))
        return self.buffer.sample()

    def sample(self, iteration: int):
        return self.sample_for_rank(self.rank, iteration)

    def train_dataloader(self):
        return DataLoader(_BatchStream(self), batch_size=None, collate_fn=_identity, num_workers=0)
