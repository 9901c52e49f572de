"""Benchmark suites: methods × datasets × seeds × budget, read from YAML and expanded into runs.

A suite file::

    name: small
    seeds: 3                      # 3 -> seeds 0, 1, 2; or a list [0, 4, 7]
    budget: {steps: 5000, eval_every: 1000, eval_episodes: 32}
    env: {name: dataset}          # the evaluation env of every run (default: the dataset's own)
    overrides: [logger=csv]       # config overrides for every run
    methods:
      - bc                        # a registered algorithm ...
      - {name: omiga, label: omiga_a1, overrides: [algorithm.alpha=1.0]}   # ... or a variant
    datasets:
      - recipe: vmas_navigation   # a built-in recipe (built on first use) ...
      - path: mamujoco/Hopper-v2-3x1-expert   # ... or a directory (relative: under data_root)
        make: python -m lightning_marl dataset convert ...   # how a user gets it (printed if missing)
        budget: {steps: 1000}     # overrides the suite's budget for this dataset
        overrides: [env.num_envs=8]
        method_overrides: {omiga: [algorithm.alpha=1.0]}
        methods: [bc, omiga]      # only these (default: every suite method supporting its actions)

Each run is the config ``load_config(None, overrides)`` with the overrides in the order env,
suite, dataset, method, method × dataset, then the fixed keys (method, dataset, budget, seed,
run_dir); its directory is ``OUT/<dataset>/<method label>/seed<k>``.

Example:
    >>> suite = suite_from_dict({"name": "t", "seeds": 2, "methods": ["bc"],
    ...                          "datasets": [{"recipe": "climbing_coordinated", "budget": {"steps": 50}}]})
    >>> suite.seeds, suite.datasets[0].budget.steps, suite.datasets[0].budget.eval_episodes
    ([0, 1], 50, 32)
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from lightning_marl.errors import ConfigError

DEFAULT_SEEDS = 5  # the default number of seeds of a benchmark suite (evaluation protocol)
SUITE_DIR = "suites"  # shipped suites live in lightning_marl/configs/suites/
_FIXED_KEYS = ("algorithm.name", "algorithm.steps", "data.path", "data.recipe", "seed", "run_dir",
               "eval.episodes", "eval.every", "resume")


@dataclass
class Budget:
    """Training iterations (``algorithm.steps``), evaluation period and episodes of every run."""

    steps: int = 10_000
    eval_every: int = 0
    eval_episodes: int = 32

    def scaled(self, factor: float) -> "Budget":
        return replace(self, steps=max(1, round(self.steps * factor)),
                       eval_every=max(1, round(self.eval_every * factor)) if self.eval_every else 0)


@dataclass
class MethodEntry:
    """A registered algorithm under a label (the same algorithm may appear twice with other overrides)."""

    label: str
    algorithm: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class DatasetEntry:
    """A built-in recipe or a dataset directory, with its own budget and overrides."""

    name: str
    recipe: str | None = None
    path: str | None = None
    budget: Budget = field(default_factory=Budget)
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    methods: list[str] | None = None
    make: str | None = None


@dataclass
class Suite:
    """A whole comparison; ``runs()`` needs the datasets' action kinds (see runner.plan_runs)."""

    name: str
    seeds: list[int]
    methods: list[MethodEntry]
    datasets: list[DatasetEntry]
    env: dict | None = field(default_factory=lambda: {"name": "dataset"})
    overrides: list[str] = field(default_factory=list)
    data_root: str | None = None
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def dataset(self, name: str) -> DatasetEntry:
        return next(d for d in self.datasets if d.name == name)

    def method(self, label: str) -> MethodEntry:
        return next(m for m in self.methods if m.label == label)

    def dataset_path(self, entry: DatasetEntry) -> Path | None:
        """The directory of a ``path`` dataset (relative paths under data_root), else None."""
        if entry.path is None:
            return None
        path = Path(os.path.expandvars(entry.path)).expanduser()
        if not path.is_absolute():
            path = data_root(self.data_root) / path
        return path


@dataclass(frozen=True)
class RunSpec:
    """One training run of a suite: everything ``execute_run`` needs, picklable for a spawned worker."""

    dataset: str
    method: str
    seed: int
    run_dir: str
    overrides: tuple[str, ...]
    steps: int

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.method}/seed{self.seed}"


def data_root(configured: str | None) -> Path:
    """Where relative dataset paths live: the suite's data_root, else the recipes' data directory."""
    if configured:
        return Path(os.path.expandvars(configured)).expanduser()
    from lightning_marl.collect.recipes import data_dir

    return data_dir()


def _check_keys(raw: dict, valid: tuple[str, ...], where: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, found {type(raw).__name__}: {raw!r}")
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=2)
            raise ConfigError(f"unknown key {key!r} in {where}." + (f" Did you mean {', '.join(close)}?" if close else "")
                              + f" Valid keys: {', '.join(valid)}")


def _string_list(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of override strings like algorithm.alpha=1.0, found {value!r}")
    for item in value:
        key = item.split("=", 1)[0]
        if key in _FIXED_KEYS:
            raise ConfigError(f"{where}: {item!r} sets {key}, which the suite owns (methods, datasets, seeds, "
                              "budget); set it there instead")
    return list(value)


def _budget(raw, base: Budget, where: str) -> Budget:
    if raw is None:
        return base
    _check_keys(raw, tuple(Budget.__dataclass_fields__), where)
    budget = replace(base, **raw)
    for name in ("steps", "eval_every", "eval_episodes"):
        value = getattr(budget, name)
        if not isinstance(value, int) or value < (1 if name != "eval_every" else 0):
            raise ConfigError(f"{where}.{name} must be an integer >= {1 if name != 'eval_every' else 0}, found {value!r}")
    return budget


def _method(raw, index: int) -> MethodEntry:
    if isinstance(raw, str):
        return MethodEntry(label=raw, algorithm=raw)
    where = f"methods[{index}]"
    _check_keys(raw, ("name", "label", "overrides"), where)
    if not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where} needs name: a registered algorithm (see `python -m lightning_marl plugins`)")
    return MethodEntry(label=str(raw.get("label") or raw["name"]), algorithm=raw["name"],
                       overrides=_string_list(raw.get("overrides"), f"{where}.overrides"))


def _dataset(raw, index: int, budget: Budget) -> DatasetEntry:
    if isinstance(raw, str):
        raw = {"recipe": raw}
    where = f"datasets[{index}]"
    _check_keys(raw, ("name", "recipe", "path", "budget", "overrides", "method_overrides", "methods", "make"), where)
    if (raw.get("recipe") is None) == (raw.get("path") is None):
        raise ConfigError(f"{where} needs exactly one of recipe: NAME (a built-in recipe) or path: DIR, found {raw!r}")
    name = raw.get("name") or raw.get("recipe") or Path(str(raw["path"])).name
    method_overrides = raw.get("method_overrides") or {}
    if not isinstance(method_overrides, dict):
        raise ConfigError(f"{where}.method_overrides must map method labels to override lists, found {method_overrides!r}")
    return DatasetEntry(
        name=str(name), recipe=raw.get("recipe"), path=None if raw.get("path") is None else str(raw["path"]),
        budget=_budget(raw.get("budget"), budget, f"{where}.budget"),
        overrides=_string_list(raw.get("overrides"), f"{where}.overrides"),
        method_overrides={k: _string_list(v, f"{where}.method_overrides.{k}") for k, v in method_overrides.items()},
        methods=None if raw.get("methods") is None else [str(m) for m in raw["methods"]],
        make=raw.get("make"),
    )


def _unique(names: list[str], what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"two {what} are named {name!r}: give one of them a different "
                              f"{'label' if what == 'methods' else 'name'}")
        if "/" in name or name.startswith(".") or not name:
            raise ConfigError(f"{what} name {name!r} cannot be a directory name: use letters, digits, - and _")
        seen.add(name)


def suite_from_dict(raw: dict, source: str = "suite") -> Suite:
    """Validate a suite mapping (unknown keys are refused, naming the closest valid ones)."""
    _check_keys(raw, ("name", "description", "seeds", "budget", "env", "overrides", "methods", "datasets",
                      "data_root"), source)
    seeds = raw.get("seeds", DEFAULT_SEEDS)
    if isinstance(seeds, int) and seeds >= 1:
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{source}: seeds must be a count >= 1 or a list of integers, found {seeds!r}")
    budget = _budget(raw.get("budget"), Budget(), "budget")
    methods = [_method(m, i) for i, m in enumerate(raw.get("methods") or [])]
    datasets = [_dataset(d, i, budget) for i, d in enumerate(raw.get("datasets") or [])]
    if not methods or not datasets:
        raise ConfigError(f"{source}: a suite needs at least one entry under methods: and under datasets:")
    _unique([m.label for m in methods], "methods")
    _unique([d.name for d in datasets], "datasets")
    labels = [m.label for m in methods]
    for d in datasets:
        for label in list(d.method_overrides) + (d.methods or []):
            if label not in labels:
                raise ConfigError(f"dataset {d.name} names method {label!r}, which is not in methods: {', '.join(labels)}")
    env = raw.get("env", {"name": "dataset"})
    if env is not None and not isinstance(env, dict):
        raise ConfigError(f"{source}: env must be a mapping like {{name: dataset}} or null, found {env!r}")
    return Suite(name=str(raw.get("name") or "suite"), seeds=list(seeds), methods=methods, datasets=datasets,
                 env=env, overrides=_string_list(raw.get("overrides"), "overrides"),
                 data_root=raw.get("data_root"), description=str(raw.get("description") or ""))


def find_suite(name_or_path: str | Path) -> Path:
    """A suite file by path, or a shipped suite by name (``small``, ``full``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    from lightning_marl.config import config_dir

    shipped = config_dir() / SUITE_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in (config_dir() / SUITE_DIR).glob("*.yaml"))
    raise ConfigError(f"no suite file {str(name_or_path)!r} and no shipped suite of that name; shipped suites: "
                      f"{', '.join(names)}")


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and validate a suite YAML file (or a shipped suite name)."""
    path = find_suite(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot read suite {path}: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"suite {path} must hold a mapping (name, seeds, budget, methods, datasets)")
    return suite_from_dict(raw, str(path))


def select(suite: Suite, methods=None, datasets=None, seeds: int | None = None, scale: float | None = None) -> Suite:
    """A sub-suite: only some methods/datasets, another seed count, budgets scaled (quick looks)."""
    for wanted, have, what in ((methods, [m.label for m in suite.methods], "methods"),
                               (datasets, [d.name for d in suite.datasets], "datasets")):
        unknown = sorted(set(wanted or []) - set(have))
        if unknown:
            raise ConfigError(f"--{what} {' '.join(unknown)}: not in the suite; its {what}: {', '.join(have)}")
    kept = [d for d in suite.datasets if not datasets or d.name in datasets]
    if scale is not None:
        kept = [replace(d, budget=d.budget.scaled(scale)) for d in kept]
    return replace(suite, methods=[m for m in suite.methods if not methods or m.label in methods], datasets=kept,
                   seeds=list(range(seeds)) if seeds else suite.seeds)


def run_overrides(suite: Suite, dataset: DatasetEntry, method: MethodEntry, seed: int, run_dir: Path) -> tuple[str, ...]:
    """The config overrides of one run, in precedence order (later wins)."""
    source = (f"data.recipe={dataset.recipe}" if dataset.recipe is not None
              else f"data.path={suite.dataset_path(dataset)}")
    budget = dataset.budget
    return (
        f"env={json.dumps(suite.env)}",
        *suite.overrides, *dataset.overrides, *method.overrides, *dataset.method_overrides.get(method.label, []),
        f"algorithm.name={method.algorithm}", source, f"algorithm.steps={budget.steps}",
        f"eval.episodes={budget.eval_episodes}", f"eval.every={budget.eval_every}", f"seed={seed}",
        f"run_dir={run_dir}", "progress=false",
    )


def suite_yaml(suite: Suite) -> str:
    """The resolved suite as YAML (stored in the output directory; ``load_suite`` reads it back)."""
    raw = suite.to_dict()
    raw["methods"] = [{"name": m.algorithm, "label": m.label, "overrides": m.overrides} for m in suite.methods]
    return yaml.safe_dump(raw, sort_keys=False)
