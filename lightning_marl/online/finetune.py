"""``finetune``: continue a trained method online, reusing ``fit``'s machinery.

The config is the offline run's (taken from its checkpoint) <- an ``online`` section <- a
finetune config file <- dot-list overrides; ``init`` names the checkpoint whose weights start
the run. ``algorithm.steps`` is derived from ``online.env_steps`` (one collection every
``online.updates_per_collection`` iterations).

Example:
    >>> cfg = finetune_config("runs/qmix_cql-3m-20261122", "finetune/ovmse", ["online.env_steps=5000"])  # doctest: +SKIP
    >>> summary = finetune(cfg)                                                                          # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from lightning_marl.config import load_config
from lightning_marl.errors import ConfigError
from lightning_marl.online.callbacks import InitialWeights, OnlineAccounting
from lightning_marl.online.datamodule import OnlineDataModule, iterations_for

_RUN_ONLY_KEYS = ("run_dir", "resume", "init")


def source_checkpoint(source) -> Path | None:
    """The checkpoint of ``--from``: a run directory (its checkpoints/last.ckpt) or a .ckpt; None
    when ``source`` is a config file or name."""
    path = Path(source)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise ConfigError(f"--from {source}: a directory without checkpoints/last.ckpt; pass a run directory of fit")
        return ckpt
    if path.suffix == ".ckpt":
        if not path.exists():
            raise ConfigError(f"--from {source}: no such checkpoint")
        return path
    return None


def finetune_config(source, config=None, overrides=(), base=None):
    """The resolved finetune config from ``--from SOURCE``, a config file or name and overrides.

    ``source`` is a run directory or checkpoint (its stored config is the base and its weights
    the start: ``init``), or a config file/name (then it is the config itself); None with
    ``base`` (a resumed finetune run's config.yaml).
    """
    ckpt = source_checkpoint(source) if source is not None else None
    layers = []
    if ckpt is not None:
        from lightning_marl.policy import load_checkpoint

        stored = OmegaConf.create(load_checkpoint(ckpt)["lightning_marl"]["config_yaml"])
        for key in _RUN_ONLY_KEYS:
            stored.pop(key, None)
        stored.init = str(ckpt.resolve())
        base = stored
    elif source is not None:
        layers.append(source)
    if base is None:
        base = OmegaConf.create({})
    if base.get("online") is None:
        base.online = {}
    cfg = load_config(layers[0] if layers else None, [], base=base)
    if config is not None:
        cfg = load_config(config, [], base=OmegaConf.create(OmegaConf.to_container(cfg)))
    return load_config(None, list(overrides), base=OmegaConf.create(OmegaConf.to_container(cfg)))


def _run_dir(cfg, dataset) -> Path:
    from lightning_marl.run import RUN_DIR_ENV, _is_launching_process, _task_name, resume_checkpoint

    if cfg.run_dir:
        return Path(cfg.run_dir)
    ckpt = resume_checkpoint(cfg)
    if ckpt is not None:
        return ckpt.parent.parent
    if not _is_launching_process() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    path = Path("runs") / f"{cfg.algorithm.name}-{_task_name(cfg, dataset)}-finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    os.environ[RUN_DIR_ENV] = str(path.resolve())
    return path


def finetune(cfg, extra_callbacks=()) -> dict:
    """Train online from ``cfg.init`` (or from scratch); returns fit's summary plus env-step figures."""
    from lightning_marl.run import fit, resolve_dataset, resolve_env

    if cfg.get("online") is None:
        cfg = OmegaConf.merge(cfg, {"online": {}})
    if cfg.online.plugins:  # the online phase's own plugins join the run's (once: the saved config holds the result)
        plugins = OmegaConf.to_container(cfg.plugins) + OmegaConf.to_container(cfg.online.plugins)
        cfg = OmegaConf.merge(cfg, {"plugins": plugins, "online": {"plugins": []}})
    dataset = resolve_dataset(cfg)
    cfg = resolve_env(cfg, dataset)
    if cfg.env is None:
        raise ConfigError(
            "finetune steps an environment: give an env section (env.name=dataset takes the dataset's, "
            "or e.g. env.name=vmas env.task=navigation)"
        )
    online = cfg.online
    steps = iterations_for(online.env_steps, online.frames_per_batch, online.updates_per_collection)
    cfg = OmegaConf.merge(cfg, {"algorithm": {"steps": steps}})
    run_dir = _run_dir(cfg, dataset)
    cfg = OmegaConf.merge(cfg, {"run_dir": str(run_dir)})
    callbacks = [OnlineAccounting(run_dir, online.frames_per_batch, online.updates_per_collection)]
    if cfg.init and not cfg.resume:
        callbacks.insert(0, InitialWeights(cfg.init))
    datamodule_class = functools.partial(OnlineDataModule, env=cfg.env, online=cfg.online)
    return fit(cfg, datamodule_class=datamodule_class, extra_callbacks=[*callbacks, *extra_callbacks])


def finetune_after_fit(cfg, summary: dict) -> dict:
    """The online phase of a ``fit`` config with an ``online`` section: fine-tune from the offline
    run's last checkpoint into RUN_DIR/online (resumed if it has a checkpoint already). Every DDP
    rank calls it (the run directory comes from the config or the launcher's environment)."""
    from lightning_marl.policy import load_checkpoint
    from lightning_marl.run import RUN_DIR_ENV

    run_dir = Path(summary.get("run_dir") or cfg.run_dir or os.environ.get(RUN_DIR_ENV, ""))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists() or load_checkpoint(ckpt)["lightning_marl"]["iteration"] < cfg.algorithm.steps:
        return summary  # an interrupted offline phase resumes first (fit resume=RUN_DIR)
    online_dir = run_dir / "online"
    if (online_dir / "checkpoints" / "last.ckpt").exists():
        return finetune(load_config(None, [f"resume={online_dir}"], base=OmegaConf.load(online_dir / "config.yaml")))
    return finetune(finetune_config(run_dir, None, [f"run_dir={online_dir}"]))
