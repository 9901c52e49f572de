"""Offline-to-online fine-tuning: batched envs stepped with the current policy inside the
Lightning loop, an online replay buffer (optionally mixed with the offline data), and the
``finetune`` runner built on ``fit``.

Example:
    >>> from lightning_marl.online import iterations_for
    >>> iterations_for(env_steps=1024, frames_per_batch=256, updates_per_collection=16)
    64
"""

from lightning_marl.online.buffer import OnlineBuffer
from lightning_marl.online.collector import Collector
from lightning_marl.online.datamodule import OnlineDataModule, env_steps_at, iterations_for
from lightning_marl.online.finetune import finetune, finetune_after_fit, finetune_config

__all__ = ["Collector", "OnlineBuffer", "OnlineDataModule", "env_steps_at", "finetune", "finetune_after_fit", "finetune_config",
           "iterations_for"]
