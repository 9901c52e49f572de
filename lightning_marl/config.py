"""The structured run configuration, its loading from YAML and dot-list overrides, and validation.

A run is one config with the sections ``algorithm``, ``data``, ``env``, ``plugins``, ``trainer``,
``eval`` and a few top-level keys. Each method and plugin owns a dataclass of its
hyper-parameters; unknown keys and wrong types are refused before any work, with the closest
valid keys named.

Example:
    >>> cfg = load_config(None, ["algorithm.name=bc", "algorithm.steps=10", "data.path=/tmp/d"])
    >>> cfg.algorithm.steps, cfg.algorithm.lr
    (10, 0.0003)
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_marl import registry
from lightning_marl.data.page_cache import warm_page_cache_choice
from lightning_marl.errors import ConfigError

DEFAULT_CONFIG = "default"


@dataclass
class AlgorithmConfig:
    """Hyper-parameters every method has; a method's own dataclass extends this one."""

    name: str = "omiga"
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    grad_clip: float = 1.0
    hidden: List[int] = field(default_factory=lambda: [256, 256])


@dataclass
class DataConfig:
    """Where the transitions come from: a dataset directory or a built-in recipe."""

    path: Optional[str] = None
    recipe: Optional[str] = None
    verify: str = "auto"
    device: str = "cpu"
    prefetch: int = 0  # batches fetched ahead by background threads (0: inline); for slow storage (see docs/performance.md)
    warm_page_cache: Any = "auto"  # read the dataset in, in file order, before the first batch: true, false, auto (if it fits in half the free memory)


ENV_FROM_DATASET = "dataset"


@dataclass
class EnvConfig:
    """The evaluation environment: a registered env name, task and parameters, or
    ``name: dataset`` for the environment recorded in the dataset's metadata."""

    name: str = ENV_FROM_DATASET
    task: Optional[str] = None
    num_envs: int = 32
    max_steps: Optional[int] = None
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """Evaluation of the decentralised policy: episodes per evaluation, every k iterations."""

    episodes: int = 32
    every: int = 0
    seed: int = 12345


@dataclass
class PluginConfig:
    name: str = "?"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OnlineConfig:
    """Online fine-tuning (``finetune``, or ``fit`` with this section): collection, buffer and mix.

    Training iteration k collects ``frames_per_batch`` env steps (``num_envs`` batched envs, per
    rank) when k is a multiple of ``updates_per_collection``; ``algorithm.steps`` is then derived
    from the ``env_steps`` budget. ``offline_ratio`` of each batch comes from the offline dataset.
    In a ``fit`` config, this section continues the run online after the offline budget.
    """

    env_steps: int = 100_000
    num_envs: int = 8
    frames_per_batch: int = 256
    updates_per_collection: int = 16
    buffer_size: int = 100_000
    offline_ratio: float = 0.0
    plugins: List[PluginConfig] = field(default_factory=list)  # added to `plugins` for the online phase only


@dataclass
class RunConfig:
    """The whole run: what ``python -m lightning_marl fit`` reads."""

    algorithm: Any = field(default_factory=AlgorithmConfig)
    data: DataConfig = field(default_factory=DataConfig)
    env: Optional[EnvConfig] = None
    plugins: List[PluginConfig] = field(default_factory=list)
    trainer: Dict[str, Any] = field(default_factory=lambda: {"accelerator": "cpu", "devices": 1})
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    run_dir: Optional[str] = None
    logger: str = "tensorboard"
    deterministic: bool = False
    log_every: int = 100
    checkpoint_every: int = 1000
    resume: Optional[str] = None
    progress: bool = True
    tune_malloc: bool = True  # glibc: keep freed buffers for reuse, no page faults per step (lightning_marl.malloc)
    iterations_per_batch: int = 8  # fit: method iterations per Lightning batch (its per-batch work paid once); same results
    compile: bool = False  # torch.compile the method's losses (forward and backward); "reduce-overhead" (CUDA graphs) on CUDA
    online: Optional[OnlineConfig] = None  # online fine-tuning (finetune); see OnlineConfig
    init: Optional[str] = None  # finetune: the checkpoint whose weights start the run


# Trainer arguments owned by other top-level keys, and where to set them instead.
_TRAINER_REFUSED = {
    "max_steps": "algorithm.steps (the method's own iterations)",
    "logger": "the top-level key `logger` (tensorboard or csv)",
    "deterministic": "the top-level key `deterministic`",
    "default_root_dir": "the top-level key `run_dir`",
}
LOGGERS = ("tensorboard", "csv")


def config_dir() -> Path:
    """The shipped configs (package data, so a non-editable install finds them)."""
    return Path(str(resources.files("lightning_marl") / "configs"))


def find_config(name_or_path: str) -> Path:
    """A YAML file by path, or a shipped config by name (``omiga/vmas_navigation``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = config_dir() / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if shipped.is_file():
        return shipped
    names = shipped_configs()
    close = difflib.get_close_matches(name_or_path, names, n=3)
    raise ConfigError(
        f"no config file {name_or_path!r} and no shipped config of that name."
        + (f" Did you mean {', '.join(close)}?" if close else "")
        + f" Shipped configs: {', '.join(names)}"
    )


def shipped_configs() -> list[str]:
    root = config_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _load_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config {path} must hold a mapping of sections, found {type(loaded).__name__}")
    return loaded


def _apply_overrides(user: DictConfig, overrides: list[str]) -> DictConfig:
    """Apply ``key.sub=value`` overrides in order; list items by index (``plugins.0.params.beta``).

    ``section={...}`` replaces a whole section; ``data.path`` and ``data.recipe`` exclude each other.
    """
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key.sub=value (e.g. algorithm.alpha=1.0)")
        key, text = item.split("=", 1)
        try:
            value = OmegaConf.from_dotlist([f"value={text}"])["value"]
            # A mapping replaces the whole section (env={name: matrix, task: climbing}); a scalar edits one key.
            OmegaConf.update(user, key, value, merge=not isinstance(value, DictConfig), force_add=True)
            # The two dataset sources exclude each other: choosing one drops the other set by a lower layer.
            other = {"data.path": "recipe", "data.recipe": "path"}.get(key)
            if other and value is not None and "data" in user:
                user.data[other] = None
        except (OmegaConfBaseException, IndexError, ValueError) as error:
            raise ConfigError(f"cannot apply override {item!r}: {_first_line(error)}") from None
    return user


def algorithm_config_class(name: str):
    method = registry.get("algorithm", name)
    return getattr(method, "config_class", AlgorithmConfig)


def load_config(config: str | Path | None, overrides: list[str] = (), base: DictConfig | None = None) -> DictConfig:
    """Resolve a run config: schema defaults <- (base) <- YAML file <- dot-list overrides.

    ``config`` is a path or a shipped config name; None means only the overrides (on ``base``).
    Raises ConfigError for unknown keys (naming the closest valid ones) and wrong types.
    """
    user = OmegaConf.create({}) if base is None else base
    if config is not None:
        user = OmegaConf.merge(user, _load_yaml(find_config(str(config))))
    user = _apply_overrides(user, list(overrides))
    raw = OmegaConf.to_container(user, resolve=False)
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping of sections")
    name = (raw.get("algorithm") or {}).get("name", AlgorithmConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"algorithm.name must be a string, found {name!r}")
    algorithm_cls = algorithm_config_class(name)
    _check_keys(raw, RunConfig, "", {"algorithm": algorithm_cls})
    schema = OmegaConf.structured(RunConfig(algorithm=algorithm_cls()))
    if raw.get("env") is not None:
        schema.env = OmegaConf.structured(EnvConfig)
    if raw.get("online") is not None:
        schema.online = OmegaConf.structured(OnlineConfig)
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"bad value for {key}: {_first_line(error)}") from None
    _check_values(merged)
    return merged


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _dataclass_of(annotation):
    """The dataclass inside an annotation like Optional[EnvConfig] / EnvConfig, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _check_keys(raw: dict, cls, prefix: str, overrides: dict) -> None:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown config key {full!r}.{hint} Valid keys{' in ' + prefix[:-1] if prefix else ''}: "
                f"{', '.join(valid)}"
            )
        is_list = typing.get_origin(hints[key]) in (list, List)
        sub = overrides.get(key) or (None if is_list else _dataclass_of(hints[key]))
        if sub is not None and isinstance(value, dict):
            _check_keys(value, sub, full + ".", {})
        elif is_list and isinstance(value, dict):
            raise ConfigError(
                f"{full} is a list; {', '.join(f'{full}.{k}' for k in value)} names an item it does not "
                f"have. Give the whole list, e.g. {full}=[{{name: ...}}], or index an existing item"
            )
        elif is_list and isinstance(value, list):
            item_cls = _dataclass_of(typing.get_args(hints[key])[0])
            for index, item in enumerate(value):
                if item_cls is not None and isinstance(item, dict):
                    _check_keys(item, item_cls, f"{full}.{index}.", {})


def _check_values(cfg: DictConfig) -> None:
    from lightning import Trainer

    trainer_args = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in cfg.trainer:
        if key in _TRAINER_REFUSED:
            raise ConfigError(f"trainer.{key} is not set in the trainer section: use {_TRAINER_REFUSED[key]}")
        if key not in trainer_args:
            close = difflib.get_close_matches(str(key), sorted(trainer_args), n=3)
            raise ConfigError(
                f"unknown config key 'trainer.{key}': not an argument of lightning.Trainer."
                + (f" Did you mean {', '.join('trainer.' + c for c in close)}?" if close else "")
            )
    if cfg.logger not in LOGGERS:
        raise ConfigError(f"logger must be one of {LOGGERS}, found {cfg.logger!r}")
    if cfg.data.verify not in ("auto", "always", "never"):
        raise ConfigError(f"data.verify must be auto, always or never, found {cfg.data.verify!r}")
    warm_page_cache_choice(cfg.data.warm_page_cache)
    if cfg.data.device not in ("cpu", "accelerator"):
        raise ConfigError(f"data.device must be cpu or accelerator, found {cfg.data.device!r}")
    if cfg.algorithm.steps < 0 or cfg.algorithm.batch_size < 1:
        raise ConfigError("algorithm.steps must be >= 0 and algorithm.batch_size >= 1")
    if cfg.log_every < 1 or cfg.checkpoint_every < 1:
        raise ConfigError("log_every and checkpoint_every must be >= 1")
    if cfg.iterations_per_batch < 1:
        raise ConfigError(f"iterations_per_batch must be >= 1 (1: one iteration per Lightning batch), "
                          f"found {cfg.iterations_per_batch}")
    for index, plugin in enumerate(cfg.plugins):
        plugin_params(plugin, f"plugins.{index}")
    if cfg.get("online") is not None:
        _check_online(cfg.online)


def _check_online(online) -> None:
    for key in ("env_steps", "num_envs", "frames_per_batch", "updates_per_collection", "buffer_size"):
        if online[key] < 1:
            raise ConfigError(f"online.{key} must be >= 1, found {online[key]}")
    if online.frames_per_batch % online.num_envs:
        raise ConfigError(
            f"online.frames_per_batch ({online.frames_per_batch}) must be a multiple of online.num_envs "
            f"({online.num_envs}): each collection steps every env the same number of times"
        )
    if not 0.0 <= online.offline_ratio <= 1.0:
        raise ConfigError(f"online.offline_ratio must lie in [0, 1], found {online.offline_ratio}")
    for index, plugin in enumerate(online.plugins):
        plugin_params(plugin, f"online.plugins.{index}")


def plugin_params(plugin_cfg, where: str = "plugins"):
    """The validated Params dataclass instance of one configured plugin."""
    cls = registry.get("plugin", plugin_cfg.name)
    params_cls = cls.Params
    raw = OmegaConf.to_container(plugin_cfg.params) if isinstance(plugin_cfg.params, (DictConfig, ListConfig)) else dict(plugin_cfg.params)
    _check_keys(raw, params_cls, f"{where}.params.", {})
    try:
        merged = OmegaConf.merge(OmegaConf.structured(params_cls), raw)
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad value for {where}.params.{getattr(error, 'full_key', '?')}: {_first_line(error)}") from None
    return OmegaConf.to_object(merged)


def algorithm_params(cfg: DictConfig):
    """The method's hyper-parameter dataclass instance from a resolved config."""
    return OmegaConf.to_object(cfg.algorithm)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml(text: str) -> DictConfig:
    """Rebuild (and re-validate) a run config from the YAML text stored in a checkpoint."""
    try:
        base = OmegaConf.create(text)  # OmegaConf's loader is a yaml SafeLoader: python tags are refused
    except Exception as error:
        raise ConfigError(f"the stored config is not plain YAML: {_first_line(error)}") from None
    return load_config(None, [], base=base)
