"""The structured config of ``python -m lightning_marl collect``.

One collection run trains (or scripts) the behaviour policies of one task once and writes one
dataset per quality: ``<output_dir>/<name>-<quality>``. Unknown keys and wrong types are refused
before any work, with the closest valid keys named (the helpers of lightning_marl.config).

Example:
    >>> cfg = load_collect_config(None, ["env.task=balance", "train.env_steps=1000"])
    >>> cfg.env.task, cfg.train.env_steps, cfg.train.algorithm
    ('balance', 1000, 'mappo')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_marl.config import _apply_overrides, _check_keys, _first_line, _load_yaml, find_config
from lightning_marl.errors import ConfigError

BUILTIN_QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert")
ALGORITHMS = ("mappo", "ippo", "masac")
MODES = ("greedy", "sample")


@dataclass
class CollectEnvConfig:
    """The environment the data comes from (``make_env(name, task, max_steps=..., **params)``)."""

    name: str = "vmas"
    task: Optional[str] = "navigation"
    num_envs: int = 32
    max_steps: Optional[int] = None
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Online training of the behaviour policy: PPO (centralised critic for mappo, local for ippo;
    discrete or continuous actions) or MASAC (continuous actions; ``updates`` to ``warmup_steps``).

    ``env_steps`` is the budget in environment steps summed over the batched envs; a checkpoint
    is saved and evaluated (greedy actions) every ``checkpoint_every`` iterations of
    ``num_envs x rollout_steps`` steps, and at iteration 0.
    """

    algorithm: str = "mappo"
    env_steps: int = 300_000
    num_envs: int = 64
    rollout_steps: int = 100
    epochs: int = 4
    minibatches: int = 4
    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 1.0
    hidden: List[int] = field(default_factory=lambda: [64, 64])
    checkpoint_every: int = 5
    eval_episodes: int = 32
    # masac only: gradient steps per iteration, batch, replay size, target rate, random-action warm-up
    updates: int = 50
    batch_size: int = 256
    buffer_size: int = 1_000_000
    tau: float = 0.005
    warmup_steps: int = 10_000


@dataclass
class QualityConfig:
    """One dataset: its episode count and how its behaviour acts.

    ``mode``: greedy (the policy's most likely action) or sample (its stochastic action);
    ``noise_std`` (Gaussian, times the action range) and ``random_prob`` (a uniform random
    action per agent and step) are added on top. ``mix`` makes the quality a mixture of other
    qualities, weighted ({medium: 0.5, expert: 0.5} is what medium-expert means).
    """

    episodes: int = 1000
    mode: str = "greedy"
    noise_std: float = 0.0
    random_prob: float = 0.0
    mix: Dict[str, float] = field(default_factory=dict)


@dataclass
class ReferenceConfig:
    """Reference-return rollouts (uniform random policy and the expert), and the medium band."""

    episodes: int = 100
    seed: int = 10_000
    medium_range: List[float] = field(default_factory=lambda: [30.0, 60.0])


@dataclass
class CollectConfig:
    """What ``python -m lightning_marl collect`` reads.

    ``behaviour``: ``trained`` (PPO in ``train``) or the name of a scripted heuristic
    (``navigation_heuristic``), whose noisier versions then play the part of training checkpoints.
    """

    name: str = "vmas_navigation"
    env: CollectEnvConfig = field(default_factory=CollectEnvConfig)
    behaviour: str = "trained"
    train: TrainConfig = field(default_factory=TrainConfig)
    qualities: Dict[str, QualityConfig] = field(default_factory=dict)
    only: Optional[List[str]] = None
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    output_dir: str = "datasets"
    work_dir: Optional[str] = None
    chunk_episodes: int = 100
    seed: int = 0
    overwrite: bool = False
    progress: bool = True


def load_collect_config(config: str | Path | None, overrides: list[str] = ()) -> DictConfig:
    """Resolve a collect config: schema defaults <- YAML file (path or shipped name) <- overrides."""
    user = OmegaConf.create({})
    if config is not None:
        user = OmegaConf.merge(user, _load_yaml(find_config(str(config))))
    user = _apply_overrides(user, list(overrides))
    raw = OmegaConf.to_container(user, resolve=False)
    _check_keys({k: v for k, v in raw.items() if k != "qualities"}, CollectConfig, "", {})
    for quality, entry in (raw.get("qualities") or {}).items():
        if isinstance(entry, dict):
            _check_keys(entry, QualityConfig, f"qualities.{quality}.", {})
    try:
        merged = OmegaConf.merge(OmegaConf.structured(CollectConfig), raw)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"bad value for {key}: {_first_line(error)}") from None
    if not merged.qualities:
        merged.qualities = {q: QualityConfig() for q in ("random", "medium", "medium-replay", "expert")}
    check_collect_config(merged)
    return merged


def check_collect_config(cfg: DictConfig) -> None:
    """Values the schema cannot check: names, ranges, mixtures that refer to known qualities."""
    if cfg.train.algorithm not in ALGORITHMS:
        raise ConfigError(f"train.algorithm must be one of {ALGORITHMS}, found {cfg.train.algorithm!r}")
    for key in ("env_steps", "num_envs", "rollout_steps", "epochs", "minibatches", "checkpoint_every",
                "eval_episodes", "updates", "batch_size", "buffer_size"):
        if cfg.train[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, found {cfg.train[key]}")
    if cfg.chunk_episodes < 1 or cfg.reference.episodes < 1 or cfg.env.num_envs < 1:
        raise ConfigError("chunk_episodes, reference.episodes and env.num_envs must be >= 1")
    low, high = list(cfg.reference.medium_range)
    if not 0 <= low < high <= 100:
        raise ConfigError(f"reference.medium_range must be [low, high] with 0 <= low < high <= 100, found {[low, high]}")
    for name, quality in cfg.qualities.items():
        where = f"qualities.{name}"
        if quality.mode not in MODES:
            raise ConfigError(f"{where}.mode must be one of {MODES}, found {quality.mode!r}")
        if quality.episodes < 1:
            raise ConfigError(f"{where}.episodes must be >= 1, found {quality.episodes}")
        if not 0 <= quality.random_prob <= 1 or quality.noise_std < 0:
            raise ConfigError(f"{where}: random_prob must be in [0, 1] and noise_std >= 0")
        if name not in BUILTIN_QUALITIES and not quality.mix:
            raise ConfigError(
                f"{where}: {name!r} is not a built-in quality ({', '.join(BUILTIN_QUALITIES)}); "
                f"a quality of your own is a mixture: set {where}.mix={{medium: 0.5, expert: 0.5}}"
            )
        for part, weight in quality.mix.items():
            if part not in BUILTIN_QUALITIES or part == name:
                raise ConfigError(f"{where}.mix names {part!r}; mix built-in qualities: {', '.join(BUILTIN_QUALITIES)}")
            if weight < 0:
                raise ConfigError(f"{where}.mix.{part} must be >= 0, found {weight}")
        if quality.mix and sum(quality.mix.values()) <= 0:
            raise ConfigError(f"{where}.mix needs a positive weight")
    for name in cfg.only or []:
        if name not in cfg.qualities:
            raise ConfigError(f"only names {name!r}, which is not in qualities ({', '.join(cfg.qualities)})")


def quality_settings(cfg: DictConfig, quality: str) -> DictConfig:
    """The settings of ``quality``: its own entry, or the defaults when it is only a mixture part."""
    if quality in cfg.qualities:
        return cfg.qualities[quality]
    return OmegaConf.structured(QualityConfig)
