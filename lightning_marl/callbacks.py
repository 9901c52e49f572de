"""Lightning callbacks of a run: iteration-based checkpoints and periodic evaluation."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from lightning_marl.data.dataset import normalised_score
from lightning_marl.envs import make_env, rollout_returns
from lightning_marl.utils import atomic_write_json


class IterationCheckpoint(L.Callback):
    """Saves ``checkpoints/last.ckpt`` every ``every`` method iterations and at the end.

    The file is written under a temporary name and renamed, so a crash mid-write leaves the
    previous checkpoint intact.
    """

    def __init__(self, dirpath, every: int):
        self.dirpath = Path(dirpath)
        self.every = every

    @property
    def last(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: L.Trainer) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / f".last.ckpt.tmp-{os.getpid()}"
        trainer.save_checkpoint(tmp, weights_only=False)  # writes on rank 0, then a barrier
        if trainer.is_global_zero:
            os.replace(tmp, self.last)
            for stale in self.dirpath.glob(".last.ckpt.tmp-*"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)

    def iteration_periods(self, trainer) -> tuple[int, ...]:
        """Lightning batches end at multiples of these (``data.datamodule.group_end``)."""
        return (self.every,)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.iteration % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer)


class GracefulStop(L.Callback):
    """SIGINT or SIGTERM stops training at the end of the current Lightning batch (one iteration,
    or ``iterations_per_batch`` of them), with a checkpoint.

    The first signal finishes the batch in progress and ends the run normally, so
    IterationCheckpoint saves ``last.ckpt`` at that iteration (a second SIGINT interrupts at once). Under DDP the ranks agree on the stop through
    one reduction every ``sync_every`` iterations, so they stop at the same iteration.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, sync_every: int = 100):
        self.sync_every = sync_every
        self.received = None
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def on_train_start(self, trainer, module) -> None:
        self.received = None
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def iteration_periods(self, trainer) -> tuple[int, ...]:
        return (self.sync_every,) if trainer.world_size > 1 else ()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        requested = self.received is not None
        if trainer.world_size > 1:
            if module.iteration % self.sync_every:
                return
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested and module.iteration < module.config.steps:
            module.interrupted_at = module.iteration
            trainer.should_stop = True

    def on_train_end(self, trainer, module) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class EvaluationCallback(L.Callback):
    """Decentralised rollouts of the current actors every ``every`` iterations and at the end.

    Runs on rank 0 only; writes ``eval.json`` (final, best and history) into the run directory.
    Also measures training throughput (grad-steps/s, evaluation time excluded).
    """

    def __init__(self, run_dir, env_cfg=None, episodes: int = 32, every: int = 0, seed: int = 0,
                 reference_returns: dict | None = None):
        self.run_dir = Path(run_dir)
        self.env_cfg = env_cfg
        self.episodes = episodes
        self.every = every
        self.seed = seed
        self.reference_returns = reference_returns or {}
        self.env = None
        self.history: list[dict] = []
        self._eval_seconds = 0.0
        self._start = None

    def on_train_start(self, trainer, module) -> None:
        self._start = (time.perf_counter(), module.iteration)
        if trainer.is_global_zero and self.env_cfg is not None:
            cfg = self.env_cfg
            self.env = make_env(cfg.name, cfg.task, num_envs=cfg.num_envs, seed=self.seed,
                                max_steps=cfg.max_steps, **dict(cfg.params))

    def evaluate(self, module) -> dict:
        from lightning_marl.policy import Policy

        began = time.perf_counter()
        was_training = module.training
        policy = Policy(module)
        result = rollout_returns(self.env, policy.act, self.episodes, seed=self.seed)
        module.train(was_training)
        self._eval_seconds += time.perf_counter() - began
        entry = {
            "iteration": module.iteration,
            "return_mean": result["mean"],
            "return_std": result["std"],
            "episodes": result["episodes"],
            "normalised_score": normalised_score(result["mean"], self.reference_returns),
            "win_rate": result.get("win_rate"),
        }
        self.history.append(entry)
        if module.logger is not None:
            metrics = {f"eval/{k}": v for k, v in entry.items() if isinstance(v, (int, float)) and k != "iteration"}
            module.logger.log_metrics(metrics, step=module.iteration)
        return entry

    def iteration_periods(self, trainer) -> tuple[int, ...]:
        return (self.every,) if self.env_cfg is not None and self.every else ()  # (the same on every rank)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.env is not None and self.every and module.iteration % self.every == 0:
            self.evaluate(module)

    def on_train_end(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        interrupted = module.interrupted_at is not None
        if self.env is not None and not interrupted and (not self.history or self.history[-1]["iteration"] != module.iteration):
            self.evaluate(module)
        seconds = time.perf_counter() - self._start[0] - self._eval_seconds
        steps = module.iteration - self._start[1]
        summary = {
            "iteration": module.iteration,
            "grad_steps_per_s": steps / seconds if seconds > 0 and steps else None,
            "train_seconds": seconds,
            "final": self.history[-1] if self.history else None,
            "best": max(self.history, key=lambda e: e["return_mean"]) if self.history else None,
            "history": self.history,
            "offline_metrics": module.last_stats,
            "interrupted_at": module.interrupted_at,
            "protocol": f"final and best policy, {self.episodes} evaluation episodes, seed {self.seed}",
        }
        atomic_write_json(self.run_dir / "eval.json", summary)
        if self.env is not None:
            self.env.close()


class IterationProgressBar(TQDMProgressBar):
    """A progress bar over the method's iterations (not Lightning's optimizer steps or epochs)."""

    def __init__(self, refresh_every: int = 50):
        super().__init__(refresh_rate=refresh_every)
        self.refresh_every = refresh_every

    def on_train_epoch_start(self, trainer, module) -> None:
        super().on_train_epoch_start(trainer, module)
        self.train_progress_bar.reset(total=module.config.steps)
        self.train_progress_bar.initial = module.iteration
        self.train_progress_bar.set_description("training")

    def iteration_periods(self, trainer) -> tuple[int, ...]:
        return (self.refresh_every,)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.iteration % self.refresh_every == 0 or module.iteration >= module.config.steps:
            self.train_progress_bar.n = module.iteration
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, module), refresh=False)
            self.train_progress_bar.refresh()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CPUThreadBudget(L.Callback):
    """Splits the CPU cores between the DDP processes of one machine (unless OMP_NUM_THREADS is set).

    Each process's torch defaults to one thread per core; two CPU ranks on two cores then run four
    busy threads that preempt each other at every parallel region, which was measured here to slow
    a training step by 10-100x. With ``devices`` CPU processes per node, each gets
    ``cores // devices`` threads (at least one).
    """

    def setup(self, trainer, module, stage: str) -> None:
        import torch

        if "OMP_NUM_THREADS" in os.environ or trainer.strategy.root_device.type != "cpu":
            return
        local_processes = max(1, trainer.num_devices)
        if local_processes > 1:
            torch.set_num_threads(max(1, available_cores() // local_processes))

