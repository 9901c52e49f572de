"""Running a config: ``fit`` (train, evaluate, save) and ``evaluate`` (a saved checkpoint).

Example:
    >>> cfg = load_config("omiga/vmas_navigation", ["algorithm.steps=100"])   # doctest: +SKIP
    >>> summary = fit(cfg)                                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf

from lightning_marl import registry
from lightning_marl.callbacks import (
    CPUThreadBudget,
    EvaluationCallback,
    GracefulStop,
    IterationCheckpoint,
    IterationProgressBar,
)
from lightning_marl.config import ENV_FROM_DATASET, algorithm_params, load_config, plugin_params, to_yaml
from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.data.dataset import Dataset, load_dataset, normalised_score
from lightning_marl.envs import make_env, rollout_returns
from lightning_marl.errors import ConfigError
from lightning_marl.malloc import tune_malloc
from lightning_marl.policy import Policy, build_module, load_checkpoint, save_policy
from lightning_marl.utils import atomic_write_json, atomic_write_text

RUN_DIR_ENV = "LIGHTNING_MARL_RUN_DIR"


def resolve_dataset(cfg) -> Dataset:
    """The dataset of a run: ``data.path``, or a built-in recipe (built once, then cached)."""
    if cfg.data.path and cfg.data.recipe:
        raise ConfigError("set either data.path or data.recipe, not both")
    if cfg.data.recipe:
        from lightning_marl.collect.recipes import ensure_recipe

        path = ensure_recipe(cfg.data.recipe)
    elif cfg.data.path:
        path = Path(cfg.data.path).expanduser()
    else:
        raise ConfigError("no dataset: set data.path=DIR or data.recipe=NAME (see `python -m lightning_marl dataset recipes`)")
    return load_dataset(path, verify=cfg.data.verify)


def _task_name(cfg, dataset: Dataset) -> str:
    env = dataset.metadata.get("env") or {}
    return str(env.get("task") or env.get("name") or dataset.id).replace("/", "_")


def resolve_run_dir(cfg, dataset: Dataset) -> Path:
    """``run_dir``, else runs/<algorithm>-<task>-<timestamp>; DDP ranks agree through the environment."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if not _is_launching_process() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])  # a DDP rank started by rank 0's launcher
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{cfg.algorithm.name}-{_task_name(cfg, dataset)}-{stamp}"
    os.environ[RUN_DIR_ENV] = str(path.resolve())
    return path


def _is_launching_process() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def resume_checkpoint(cfg) -> Path | None:
    """The checkpoint named by ``resume=RUN_DIR_OR_CKPT`` (RUN_DIR means its checkpoints/last.ckpt)."""
    if not cfg.resume:
        return None
    target = Path(cfg.resume)
    ckpt = target / "checkpoints" / "last.ckpt" if target.is_dir() else target
    if not ckpt.exists():
        raise ConfigError(f"resume={cfg.resume}: no checkpoint at {ckpt}")
    load_checkpoint(ckpt)  # refuses a file that needs unpickling (or is not ours) with a ConfigError, before Lightning reads it
    return ckpt


def resolve_env(cfg, dataset: Dataset):
    """``env: {name: dataset}`` becomes the env recorded in the dataset's metadata (or no env)."""
    if cfg.env is None or cfg.env.name != ENV_FROM_DATASET:
        return cfg
    recorded = dataset.metadata.get("env") or {}
    if not recorded.get("name"):
        warnings.warn(f"dataset {dataset.id} records no environment: training without evaluation")
        return OmegaConf.merge(cfg, {"env": None})
    env = {"name": recorded["name"], "task": recorded.get("task"), "params": recorded.get("params") or {}}
    if cfg.env.task is not None:
        env["task"] = cfg.env.task
    if cfg.env.max_steps is not None or recorded.get("max_steps") is not None:
        env["max_steps"] = cfg.env.max_steps if cfg.env.max_steps is not None else recorded["max_steps"]
    env["params"] = {**env["params"], **OmegaConf.to_container(cfg.env.params)}
    resolved = OmegaConf.merge(cfg, {"env": env})
    return resolved


def build_plugins(cfg) -> list:
    plugins = [registry.get("plugin", p.name)(plugin_params(p, f"plugins.{i}")) for i, p in enumerate(cfg.plugins)]
    if cfg.get("online") is None:  # only online collection calls the explore hook
        from lightning_marl.algorithms.base import ONLINE_HOOKS
        from lightning_marl.errors import PluginError

        for p, plugin in zip(cfg.plugins, plugins):
            online_only = set(plugin.implemented_hooks()) & set(ONLINE_HOOKS)
            if online_only:
                raise PluginError(
                    f"plugin {p.name!r} implements {', '.join(sorted(online_only))}, which only online collection "
                    "calls: use it with `python -m lightning_marl finetune` (or add an online section)"
                )
    return plugins


def quiet_lightning() -> None:
    """Silence Lightning's tips and warnings that do not apply to our stream-of-batches design."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (".*IterableDataset.*", ".*LeafSpec.*", ".*does not have many workers.*",
                    ".*resuming from a checkpoint that ended before the epoch ended.*"):
        warnings.filterwarnings("ignore", message=pattern)


def fit(cfg, datamodule_class=OfflineDataModule, extra_callbacks=()) -> dict:
    """Train the configured method; returns the summary (also in run_dir/eval.json)."""
    quiet_lightning()
    if cfg.tune_malloc:
        tune_malloc()
    ckpt_path = resume_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dataset = resolve_dataset(cfg)
    cfg = resolve_env(cfg, dataset)
    spec = dataset.spec
    method = registry.get("algorithm", cfg.algorithm.name)
    module = method(spec, algorithm_params(cfg), plugins=build_plugins(cfg), log_every=cfg.log_every)
    if cfg.get("compile"):
        module.compile_losses(cuda=cfg.trainer.get("accelerator") in ("gpu", "cuda") or torch.cuda.is_available())
    run_dir = Path(cfg.run_dir) if cfg.run_dir else (ckpt_path.parent.parent if ckpt_path else resolve_run_dir(cfg, dataset))
    # The stored config names one dataset source: a recipe stays a recipe (dataset.json has its path).
    cfg = OmegaConf.merge(cfg, {"run_dir": str(run_dir)} if cfg.data.get("recipe") else
                          {"run_dir": str(run_dir), "data": {"path": str(dataset.path)}})
    config_yaml = to_yaml(cfg)
    dataset_info = {
        "id": dataset.id, "checksum": dataset.checksum, "path": str(dataset.path),
        "reference_returns": dataset.reference_returns,
    }
    module.config_yaml, module.dataset_info, module.seed = config_yaml, dataset_info, cfg.seed
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_launching_process():
        atomic_write_text(run_dir / "config.yaml", config_yaml)
        atomic_write_json(run_dir / "dataset.json", dataset_info)

    datamodule = datamodule_class(dataset, cfg.algorithm.batch_size, seed=cfg.seed, device=cfg.data.device,
                                  prefetch=cfg.data.prefetch, iterations_per_batch=cfg.iterations_per_batch,
                                  warm_page_cache=cfg.data.warm_page_cache)
    if cfg.logger == "csv":
        logger = CSVLogger(save_dir=str(run_dir), name="logs", version="")
    else:
        logger = TensorBoardLogger(save_dir=str(run_dir), name="logs", version="", default_hp_metric=False)
    checkpointer = IterationCheckpoint(run_dir / "checkpoints", cfg.checkpoint_every)
    evaluator = EvaluationCallback(run_dir, cfg.env, cfg.eval.episodes, cfg.eval.every, cfg.eval.seed,
                                   dataset.reference_returns)
    trainer = L.Trainer(
        max_epochs=-1,  # the module stops the run when algorithm.steps iterations are done
        logger=logger,
        callbacks=[CPUThreadBudget(), GracefulStop(cfg.log_every), checkpointer, evaluator,
                   *([IterationProgressBar()] if cfg.progress else []), *extra_callbacks],
        deterministic=cfg.deterministic,
        default_root_dir=str(run_dir),
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **OmegaConf.to_container(cfg.trainer),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    if not trainer.is_global_zero:
        return {}
    save_policy(run_dir / "policy.pt", module, config_yaml, dataset_info)
    summary = {"run_dir": str(run_dir), "algorithm": cfg.algorithm.name, "dataset": dataset.id}
    eval_file = run_dir / "eval.json"
    if eval_file.exists():
        summary.update(json.loads(eval_file.read_text()))
    summary["module"] = module
    return summary


def evaluate(checkpoint, overrides: list[str] = ()) -> dict:
    """Rebuild the policy from a checkpoint alone and roll it out in its (or an overridden) env."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    saved = load_checkpoint(path)
    state = saved["lightning_marl"]
    module, cfg = build_module(state["config_yaml"], state["spec"])
    module.load_state_dict(saved["state_dict"])
    cfg = load_config(None, list(overrides), base=cfg)
    if cfg.env is None:
        raise ConfigError(
            "this run has no env section: give one, e.g. env.name=vmas env.task=navigation env.params.n_agents=3"
        )
    env = make_env(cfg.env.name, cfg.env.task, num_envs=cfg.env.num_envs, seed=cfg.eval.seed,
                   max_steps=cfg.env.max_steps, **dict(cfg.env.params))
    result = rollout_returns(env, Policy(module).act, cfg.eval.episodes, seed=cfg.eval.seed)
    env.close()
    reference = (state.get("dataset") or {}).get("reference_returns") or {}
    return {
        "checkpoint": str(path),
        "iteration": state.get("iteration"),
        "episodes": result["episodes"],
        "return_mean": result["mean"],
        "return_std": result["std"],
        "normalised_score": normalised_score(result["mean"], reference),
        "win_rate": result.get("win_rate"),
    }


