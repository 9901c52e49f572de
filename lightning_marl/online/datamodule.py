"""The online DataModule: collection inside the Lightning loop, an online buffer, an offline mix.

The batch stream yields iteration numbers only. Right before training step k (Lightning's
``on_before_batch_transfer``, after step k-1 has updated the networks, whatever Lightning
prefetched), the DataModule collects ``frames_per_batch`` env steps with the current policy when
k is a multiple of ``updates_per_collection``, then samples batch k: ``offline_ratio`` of its
rows from the offline dataset, the rest from the online buffer, with generators seeded from
(seed, rank, k). Under DDP every rank steps its own envs (seeded by rank) and keeps its own buffer;
checkpoints hold every rank's buffer, and a resumed run gives each rank its own back.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from lightning_marl.data.datamodule import OfflineDataModule, _identity, batch_seed
from lightning_marl.data.dataset import Dataset
from lightning_marl.envs import env_spec, make_env
from lightning_marl.errors import ConfigError
from lightning_marl.online.buffer import OnlineBuffer
from lightning_marl.online.collector import Collector


def iterations_for(env_steps: int, frames_per_batch: int, updates_per_collection: int) -> int:
    """Training iterations of an online budget: one collection of ``frames_per_batch`` env steps
    every ``updates_per_collection`` iterations, until ``env_steps`` are collected.

    Example:
        >>> iterations_for(1000, 256, 16)   # 4 collections (1024 env steps)
        64
    """
    return math.ceil(env_steps / frames_per_batch) * updates_per_collection


def env_steps_at(iteration: int, frames_per_batch: int, updates_per_collection: int) -> int:
    """Env steps collected once ``iteration`` training iterations are done (collections happen
    before iterations 0, U, 2U, ...).

    Example:
        >>> env_steps_at(0, 256, 16), env_steps_at(1, 256, 16), env_steps_at(16, 256, 16), env_steps_at(17, 256, 16)
        (0, 256, 256, 512)
    """
    return math.ceil(iteration / updates_per_collection) * frames_per_batch


class OnlineDataModule(OfflineDataModule):
    """Batches mixing online transitions (collected with the current policy) and offline ones.

    ``online`` is the run's ``online`` config section, ``env`` its (resolved) ``env`` section
    (the collection envs use ``online.num_envs``). ``env_steps`` counts this rank's env steps
    and is copied to ``module.env_steps`` for the plugins' schedules.

    Example:
        >>> dm = OnlineDataModule(dataset, 128, seed=0, env=cfg.env, online=cfg.online)   # doctest: +SKIP
        >>> trainer.fit(module, datamodule=dm)                                              # doctest: +SKIP
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, device: str = "cpu", prefetch: int = 0,
                 *, env, online, **kwargs):
        self.n_offline = round(online.offline_ratio * batch_size)
        self.n_online = batch_size - self.n_offline
        # Batches are sampled at step time (after collection): no background prefetch.
        # One iteration per Lightning batch: iteration k's batch is drawn after step k-1 (its collection
        # uses the policy as it is then), so iterations cannot be grouped ahead.
        kwargs["iterations_per_batch"] = 1
        super().__init__(dataset, max(self.n_offline, 1), seed=seed, device=device, prefetch=0, **kwargs)
        self.total_batch_size = batch_size
        self.env_cfg = env
        self.online = online
        self.online_buffer = OnlineBuffer(online.buffer_size)
        self.collector: Collector | None = None
        self.env_steps = 0
        self.collect_seconds = 0.0
        self.keys = None
        self._pending_keys = None

    # ---- setup ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.collector is not None:
            return
        if self.slices is not None:
            raise ConfigError("online fine-tuning samples single transitions; recurrent methods (slice_len) are not supported")
        cfg = self.env_cfg
        if cfg is None:
            raise ConfigError("online training needs an env section (env.name, env.task, env.params)")
        seed = int(np.random.SeedSequence([self.seed, self.rank, 0x0C011EC7]).generate_state(1)[0] >> 1)
        env = make_env(cfg.name, cfg.task, num_envs=self.online.num_envs, seed=seed, max_steps=cfg.max_steps,
                       **dict(cfg.params))
        spec = env_spec(env)
        ds = self.dataset.spec
        if (spec["n_agents"], spec["obs_dim"], spec["discrete"]) != (ds.n_agents, ds.obs_dim, ds.discrete):
            raise ConfigError(
                f"the env {cfg.name}/{cfg.task} (agents {spec['n_agents']}, obs {spec['obs_dim']}, "
                f"discrete {spec['discrete']}) does not match the dataset {self.dataset.id} (agents {ds.n_agents}, "
                f"obs {ds.obs_dim}, discrete {ds.discrete}); fine-tune in the environment the data came from"
            )
        self.collector = Collector(env, spec, seed=seed)

    def teardown(self, stage: str | None = None) -> None:
        super().teardown(stage)
        if self.collector is not None:
            self.collector.close()
            self.collector = None

    # ---- the loop ---------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        if not isinstance(batch, int):  # an offline batch (e.g. a test feeding one directly)
            return batch
        module = self.trainer.lightning_module
        if batch % self.online.updates_per_collection == 0:
            self.collect(module)
        module.env_steps = self.env_steps
        return self.sample(batch)

    def collect(self, module) -> None:
        """One collection of ``frames_per_batch`` env steps with the module's current policy."""
        began = time.perf_counter()
        rows = self.collector.collect(module, self.online.frames_per_batch)
        if self.keys is None:
            self.keys = self._common_keys(rows)
        self.online_buffer.extend(rows.select(*self.keys))
        self.env_steps += self.online.frames_per_batch
        module.env_steps = self.env_steps
        self.collect_seconds += time.perf_counter() - began

    def _common_keys(self, rows) -> list:
        offline = set(self.dataset.keys())
        online = set(rows.keys(include_nested=True, leaves_only=True))
        if self.n_offline == 0:
            return sorted(online, key=str)
        dropped = sorted(str(k) for k in offline ^ online)
        if dropped:
            warnings.warn(f"online and offline transitions share only some keys; not used in training: {dropped}")
        return sorted(offline & online, key=str)

    def sample_for_rank(self, rank: int, iteration: int):
        seed = batch_seed(self.seed, rank, iteration)
        online = self.online_buffer.sample(self.n_online, seed ^ 0x0A11) if self.n_online else None
        if not self.n_offline:
            return online
        offline = super().sample_for_rank(rank, iteration)
        offline = offline.select(*self.keys) if self.keys is not None else offline
        return offline if online is None else torch.cat([offline, online.to(offline.device)])

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        return DataLoader(_IterationStream(self), batch_size=None, collate_fn=_identity, num_workers=0)

    # ---- checkpoint state (tensors and plain data only) -------------------------------------
    def state_dict(self) -> dict:
        """This rank's env-step counter and online buffer; under DDP, every rank's, gathered (all
        ranks save a checkpoint at the same iteration) so that a resumed run gives each rank back
        its own experience, not copies of rank 0's."""
        own = {
            "env_steps": self.env_steps,
            "keys": [list(k) if isinstance(k, tuple) else k for k in (self.keys or [])],
            "buffer": self.online_buffer.state_dict(),
        }
        world = self.trainer.world_size if self.trainer is not None else 1
        if world == 1:
            return own
        import torch.distributed as dist

        gathered = [None] * world
        dist.all_gather_object(gathered, own)
        return {"ranks": gathered}

    def load_state_dict(self, state: dict) -> None:
        if "ranks" in state:
            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            if len(state["ranks"]) != world:
                raise ConfigError(
                    f"the checkpoint holds the online buffers of {len(state['ranks'])} DDP processes, this run has "
                    f"{world}: resume with the same trainer.devices x trainer.num_nodes, or start a new finetune "
                    "run from its weights (init=<the checkpoint>), which begins with empty buffers"
                )
            state = state["ranks"][rank]
        self.env_steps = int(state["env_steps"])
        self.keys = [tuple(k) if isinstance(k, list) else k for k in state["keys"]] or None
        self.online_buffer.load_state_dict(state["buffer"])
        if self.trainer is not None:
            self.trainer.lightning_module.env_steps = self.env_steps


class _IterationStream(torch.utils.data.IterableDataset):
    """Yields the iteration numbers k, k+1, ... from the module's counter (endless: the module stops)."""

    def __init__(self, datamodule: OnlineDataModule):
        self.datamodule = datamodule

    def __iter__(self):
        trainer = self.datamodule.trainer
        iteration = trainer.lightning_module.iteration if trainer is not None else 0
        while True:
            yield iteration
            iteration += 1
