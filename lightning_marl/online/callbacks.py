"""Callbacks of an online run: initial weights from the offline checkpoint, env-step accounting."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from lightning_marl.callbacks import EvaluationCallback
from lightning_marl.online.datamodule import env_steps_at
from lightning_marl.utils import atomic_write_json


class InitialWeights(L.Callback):
    """Loads the networks (and targets, normaliser) of a lightning_marl checkpoint into the module
    at setup; a resumed run then restores its own checkpoint over them.

    Example:
        >>> InitialWeights("runs/offline/checkpoints/last.ckpt").path.name
        'last.ckpt'
    """

    def __init__(self, path):
        self.path = Path(path)

    def setup(self, trainer, module, stage: str) -> None:
        from lightning_marl.policy import load_checkpoint

        saved = load_checkpoint(self.path)
        algorithm = saved["lightning_marl"].get("algorithm")
        if algorithm != module.registry_name:
            from lightning_marl.errors import ConfigError

            raise ConfigError(
                f"init={self.path} holds a {algorithm!r} model but the run trains {module.registry_name!r}; "
                f"set algorithm.name={algorithm} or start from a {module.registry_name} checkpoint"
            )
        try:
            module.load_state_dict(saved["state_dict"])
        except RuntimeError as error:
            from lightning_marl.errors import ConfigError

            raise ConfigError(
                f"the weights of init={self.path} do not fit the configured networks ({str(error).splitlines()[0]}); "
                "keep the offline run's algorithm settings (hidden sizes, mixer) when fine-tuning"
            ) from None


class OnlineAccounting(L.Callback):
    """Evaluates the starting policy (iteration 0, env step 0) and adds the env-step counts and the
    online collection throughput to ``eval.json``: ``env_steps``, ``env_steps_per_s`` (env steps
    per second of training with learning on, evaluation excluded), ``collect_seconds`` and the
    mean return of the episodes finished while collecting (exploration included).

    Example:
        >>> accounting = OnlineAccounting("runs/x", frames_per_batch=256, updates_per_collection=16)
        >>> accounting.frames, accounting.updates
        (256, 16)
    """

    def __init__(self, run_dir, frames_per_batch: int, updates_per_collection: int):
        self.run_dir = Path(run_dir)
        self.frames, self.updates = frames_per_batch, updates_per_collection
        self._start_env_steps = 0

    def _evaluator(self, trainer) -> EvaluationCallback | None:
        return next((c for c in trainer.callbacks if isinstance(c, EvaluationCallback)), None)

    def on_train_start(self, trainer, module) -> None:
        self._start_env_steps = trainer.datamodule.env_steps
        evaluator = self._evaluator(trainer)
        if trainer.is_global_zero and evaluator is not None and evaluator.env is not None and module.iteration == 0:
            evaluator.evaluate(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.iteration % module.log_every == 0 and module.logger is not None:
            returns = trainer.datamodule.collector.finished_returns[-32:]
            metrics = {"online/env_steps": trainer.datamodule.env_steps}
            if returns:
                metrics["online/episode_return"] = sum(returns) / len(returns)
            module.logger.log_metrics(metrics, step=module.iteration)

    def on_train_end(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        path = self.run_dir / "eval.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        for entry in summary.get("history", []) + [summary.get("final"), summary.get("best")]:
            if entry:
                entry["env_steps"] = env_steps_at(entry["iteration"], self.frames, self.updates)
        datamodule = trainer.datamodule
        collected = datamodule.env_steps - self._start_env_steps
        seconds = summary.get("train_seconds")
        returns = datamodule.collector.finished_returns if datamodule.collector is not None else []
        summary.update({
            "env_steps": datamodule.env_steps,
            "env_steps_per_s": collected / seconds if seconds and collected else None,
            "collect_seconds": datamodule.collect_seconds,
            "online_episodes": len(returns),
            "online_return_mean": sum(returns) / len(returns) if returns else None,
        })
        atomic_write_json(path, summary)
