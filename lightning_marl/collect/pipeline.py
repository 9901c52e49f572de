"""``collect``: behaviour policies -> reference returns -> one dataset per quality, resumable.

The work directory (``work_dir``, default ``<output_dir>/.work/<name>``) holds everything that
makes an interrupted collection resumable::

    identity.json            what the trained policies depend on (env, behaviour, train, seed)
    training/                PPO checkpoints, index.json and state.pt (train_behaviour)
    ladder.json              the behaviour ladder with measured returns
    references.json          random and expert reference returns (rollouts)
    chunks/<quality>/*.pt    finished chunks of episodes, named by what they contain

Every chunk has its own seed, so a resumed collection writes the same data as an uninterrupted
one; a chunk is written atomically, and so is each dataset (``write_dataset``), so nothing
half-written ever looks complete. A finished dataset is skipped when the same command runs again.

Example:
    >>> from lightning_marl.collect.config import load_collect_config
    >>> cfg = load_collect_config("collect/vmas_navigation", ["train.env_steps=2000"])  # doctest: +SKIP
    >>> paths = run_collect(cfg)                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from tqdm.auto import tqdm

from lightning_marl.collect.behaviour import uniform_random
from lightning_marl.collect.collector import collect_transitions
from lightning_marl.collect.config import quality_settings
from lightning_marl.collect.masac import train_masac
from lightning_marl.collect.online_training import task_spec, train_behaviour
from lightning_marl.collect.qualities import (
    build_act,
    checkpoint_ladder,
    plan_quality,
    scripted_ladder,
    select_qualities,
)
from lightning_marl.data import schema
from lightning_marl.data.dataset import read_metadata, write_dataset
from lightning_marl.data.schema import key_name
from lightning_marl.envs import env_spec, make_env, rollout_returns
from lightning_marl.errors import ConfigError
from lightning_marl.utils import atomic_torch_save, atomic_write_json

VERSIONED_PACKAGES = ("lightning_marl", "torch", "torchrl", "tensordict", "numpy", "vmas", "mpe2", "pettingzoo",
                      "gymnasium", "gymnasium-robotics", "mujoco", "jax", "jaxmarl")


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict:
    """Versions of the installed packages that can change the data (absent ones left out)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def team_reward_rule(env, transitions: TensorDict, spec: dict | None = None) -> str:
    """How the team reward relates to the per-agent rewards, as the env states it or as the data shows."""
    if spec and isinstance(spec.get("team_reward_rule"), str):
        return spec["team_reward_rule"]
    for candidate in (env, getattr(env, "base_env", None)):
        rule = getattr(candidate, "team_reward_rule", None)
        if isinstance(rule, str):
            return rule
    team = transitions.get(schema.REWARD)
    if schema.AGENT_REWARD not in transitions.keys(include_nested=True):
        return "the environment's team reward (no per-agent rewards given)"
    agents = transitions.get(schema.AGENT_REWARD).squeeze(-1)  # [T, N]
    if torch.allclose(agents, agents[:, :1].expand_as(agents)) and torch.allclose(team[:, 0], agents[:, 0]):
        return "shared: the environment gives every agent the same reward, which is the team reward"
    if torch.allclose(team[:, 0], agents.mean(-1), atol=1e-5):
        return "mean of the per-agent rewards the environment gives"
    if torch.allclose(team[:, 0], agents.sum(-1), atol=1e-5):
        return "sum of the per-agent rewards the environment gives"
    return "the environment's own team reward (per-agent rewards kept as given)"


def _differences(old, new, prefix: str = "") -> list[tuple]:
    """(key, old, new) for every leaf where two nested dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix[:-1], old, new)]


class Collection:
    """One collection run: its config, env factory, work directory and cached results."""

    def __init__(self, cfg: DictConfig, command: str | None = None, on_chunk=None):
        self.cfg = cfg
        self.command = command or "python -m lightning_marl collect " + " ".join(sys.argv[1:])
        self.on_chunk = on_chunk
        self.output_dir = Path(cfg.output_dir)
        self.work = Path(cfg.work_dir) if cfg.work_dir else self.output_dir / ".work" / cfg.name
        self.training_dir = self.work / "training"
        self.env_cfg = OmegaConf.to_container(cfg.env)
        self._envs: dict = {}
        self.probe = self._env(min(cfg.env.num_envs, cfg.chunk_episodes))  # reused for collection
        self.spec = env_spec(self.probe)
        self.task = task_spec(self.spec)

    def make_env(self, num_envs: int, seed: int):
        env = self.env_cfg
        return make_env(env["name"], env["task"], num_envs=num_envs, seed=seed, max_steps=env["max_steps"],
                        **env["params"])

    def _env(self, num_envs: int):
        if num_envs not in self._envs:
            self._envs[num_envs] = self.make_env(num_envs, self.cfg.seed)
        return self._envs[num_envs]

    def close(self) -> None:
        for env in self._envs.values():
            if not env.is_closed:
                env.close()
        self._envs.clear()

    # -- what the behaviour depends on ------------------------------------------------------------
    def identity(self) -> dict:
        train = OmegaConf.to_container(self.cfg.train)
        train.pop("env_steps")  # a larger budget continues training from the last checkpoint
        return {"env": {k: v for k, v in self.env_cfg.items() if k != "num_envs"},
                "behaviour": self.cfg.behaviour,
                "train": train if self.cfg.behaviour == "trained" else {"eval_episodes": train["eval_episodes"]},
                "seed": self.cfg.seed}

    def check_work_dir(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        file = self.work / "identity.json"
        identity = self.identity()
        if file.exists():
            found = json.loads(file.read_text())
            if found != identity:
                changes = _differences(found, identity)
                raise ConfigError(
                    f"work directory {self.work} belongs to a collection with different settings: "
                    + "; ".join(f"{key} was {old!r}, now {new!r}" for key, old, new in changes)
                    + ". Give another work_dir=..., or delete that directory to start over"
                )
        else:
            atomic_write_json(file, identity)

    # -- behaviour ladder and reference returns --------------------------------------------------
    def ladder(self) -> list[dict]:
        cfg = self.cfg
        if cfg.behaviour == "trained":
            train = train_masac if cfg.train.algorithm == "masac" else train_behaviour
            index = train(self.make_env, self.task, cfg.train, self.training_dir, seed=cfg.seed,
                          eval_seed=cfg.seed + 1, progress=cfg.progress)
            return checkpoint_ladder(index, cfg.train.algorithm)
        file = self.work / "ladder.json"
        if file.exists():
            return json.loads(file.read_text())
        ladder = scripted_ladder(cfg.behaviour)
        env = self.make_env(min(cfg.train.eval_episodes, 64), cfg.seed + 1)
        for entry in tqdm(ladder, desc="measuring the scripted ladder", disable=not cfg.progress):
            act = build_act(entry["policy"], self.spec, self.task, self.training_dir,
                            torch.Generator().manual_seed(cfg.seed + 1))
            entry["return"] = rollout_returns(env, act, cfg.train.eval_episodes, seed=cfg.seed + 1)["mean"]
        env.close()
        atomic_write_json(file, ladder)
        return ladder

    def references(self, ladder: list[dict]) -> dict:
        """Random and expert reference returns, measured by rollouts (cached per ladder)."""
        cfg = self.cfg
        expert = max(range(len(ladder)), key=lambda i: ladder[i]["return"])
        key = _digest([ladder[expert]["policy"], OmegaConf.to_container(cfg.reference)])
        file = self.work / "references.json"
        if file.exists():
            cached = json.loads(file.read_text())
            if cached.get("key") == key:
                return cached
        seed, episodes = cfg.reference.seed, cfg.reference.episodes
        env = self.make_env(min(episodes, 64), seed)
        random_return = rollout_returns(env, uniform_random(self.spec, torch.Generator().manual_seed(seed)),
                                        episodes, seed=seed)["mean"]
        policy = {**ladder[expert]["policy"], "mode": "greedy"}
        act = build_act(policy, self.spec, self.task, self.training_dir, torch.Generator().manual_seed(seed))
        expert_return = rollout_returns(env, act, episodes, seed=seed)["mean"]
        env.close()
        reference = {
            "random": random_return, "expert": expert_return, "episodes": episodes, "seed": seed,
            "source": f"rollouts, {episodes} episodes each, of the uniform random policy and of the expert: "
                      f"{ladder[expert]['label']}, the best of {len(ladder)} behaviour policies "
                      f"({'within the training budget' if cfg.behaviour == 'trained' else 'scripted'}), greedy",
            "key": key,
        }
        atomic_write_json(file, reference)
        return reference

    # -- chunks ----------------------------------------------------------------------------------
    def chunks(self, quality: str, plan: list[dict]) -> list[dict]:
        """The plan's chunks: ``{"policy", "episodes", "seed", "file"}`` in dataset order."""
        out, size = [], self.cfg.chunk_episodes
        env_key = {k: v for k, v in self.env_cfg.items() if k != "num_envs"}
        for s, segment in enumerate(plan):
            for c, start in enumerate(range(0, segment["episodes"], size)):
                count = min(size, segment["episodes"] - start)
                seed = int(_digest([self.cfg.seed, quality, s, c]), 16) % (2**31)
                name = _digest([segment["policy"], count, seed, env_key, self.cfg.env.num_envs])
                out.append({"policy": segment["policy"], "episodes": count, "seed": seed,
                            "file": self.work / "chunks" / quality / f"{name}.pt"})
        return out

    def collect_chunk(self, chunk: dict) -> TensorDict:
        generator = torch.Generator().manual_seed(chunk["seed"])
        act = build_act(chunk["policy"], self.spec, self.task, self.training_dir, generator)
        env = self._env(min(self.cfg.env.num_envs, chunk["episodes"]))
        return collect_transitions(env, act, chunk["episodes"], self.spec, seed=chunk["seed"], progress=False)

    def gather(self, quality: str, plan: list[dict]) -> TensorDict:
        chunks = self.chunks(quality, plan)
        total = sum(c["episodes"] for c in chunks)
        bar = tqdm(total=total, desc=f"collecting {quality}", unit="episode", disable=not self.cfg.progress)
        parts, offset = [], 0
        for number, chunk in enumerate(chunks):
            if chunk["file"].exists():
                saved = torch.load(chunk["file"], weights_only=True)
                td = TensorDict({tuple(k.split(".")) if "." in k else k: v for k, v in saved.items()},
                                batch_size=[len(saved[schema.EPISODE])])
            else:
                td = self.collect_chunk(chunk)
                chunk["file"].parent.mkdir(parents=True, exist_ok=True)
                atomic_torch_save({key_name(k): v for k, v in td.items(include_nested=True, leaves_only=True)},
                                  chunk["file"])
                if self.on_chunk is not None:
                    self.on_chunk(quality, number)
            td.set(schema.EPISODE, td.get(schema.EPISODE) + offset)
            offset += chunk["episodes"]
            parts.append(td)
            bar.update(chunk["episodes"])
        bar.close()
        return torch.cat(parts)

    # -- the run ---------------------------------------------------------------------------------
    def quality_key(self, quality: str) -> str:
        cfg = self.cfg
        settings = quality_settings(cfg, quality)
        parts = list(settings.mix) or (["medium", "expert"] if quality == "medium-expert" else [])
        own = {q: OmegaConf.to_container(quality_settings(cfg, q)) for q in [quality, *parts]}
        return _digest([self.identity(), cfg.train.env_steps, quality, own, cfg.chunk_episodes, cfg.env.num_envs,
                        OmegaConf.to_container(cfg.reference)])

    def dataset_path(self, quality: str) -> Path:
        return self.output_dir / f"{self.cfg.name}-{quality}"

    def pending(self) -> list[str]:
        """Qualities still to write; refuses to overwrite other datasets unless ``overwrite``."""
        todo = []
        for quality in self.cfg.only or list(self.cfg.qualities):
            path = self.dataset_path(quality)
            if path.exists():
                try:
                    done_key = read_metadata(path).get("generation", {}).get("collect_key")
                except Exception:
                    done_key = None
                if done_key == self.quality_key(quality) and not self.cfg.overwrite:
                    continue
                if not self.cfg.overwrite:
                    raise ConfigError(
                        f"{path} already exists and was not made by this collection; pass overwrite=true "
                        "to replace it, or choose another output_dir or name"
                    )
            todo.append(quality)
        return todo

    def run(self) -> dict:
        cfg = self.cfg
        todo = self.pending()
        self.check_work_dir()
        ladder = self.ladder()
        reference = self.references(ladder)
        pick = select_qualities(ladder, reference, list(cfg.reference.medium_range))
        for entry, score in zip(ladder, pick["scores"]):
            entry["normalised_score"] = score
        atomic_write_json(self.work / "ladder.json", ladder)
        paths = {q: self.dataset_path(q) for q in cfg.only or list(cfg.qualities)}
        for quality in todo:
            settings = cfg.qualities[quality]
            plan = plan_quality(quality, settings.episodes, ladder, pick, lambda q: quality_settings(cfg, q))
            transitions = self.gather(quality, plan)
            self.write(quality, transitions, plan, ladder, pick, reference)
            shutil.rmtree(self.work / "chunks" / quality, ignore_errors=True)
        self.close()
        return {"datasets": paths, "reference": reference, "ladder": ladder, "pick": pick}

    def write(self, quality, transitions, plan, ladder, pick, reference) -> None:
        cfg = self.cfg
        medium = ladder[pick["medium"]]
        behaviour = {
            "kind": cfg.behaviour if cfg.behaviour != "trained" else f"trained online ({cfg.train.algorithm}, "
                    f"{cfg.train.env_steps} env steps budget)",
            "segments": [{"source": s["source"], "episodes": s["episodes"], "policy": s["policy"]} for s in plan],
            "expert": {"label": ladder[pick["expert"]]["label"], "eval_return": ladder[pick["expert"]]["return"],
                       "rule": "the behaviour policy with the highest evaluation return"},
            "medium": {"label": medium["label"], "eval_return": medium["return"],
                       "normalised_score": medium["normalised_score"], "in_range": pick["medium_in_range"],
                       "rule": "the last behaviour policy before the expert whose normalised score is in "
                               f"{list(cfg.reference.medium_range)}"
                               + ("" if pick["medium_in_range"] else "; none was: the closest to the middle")},
            "ladder": [{"label": e["label"], "eval_return": e["return"], "normalised_score": e["normalised_score"]}
                       for e in ladder],
        }
        write_dataset(
            self.dataset_path(quality), transitions,
            {
                "id": f"{cfg.name}-{quality}",
                "spec": self.task,
                "env": {k: v for k, v in self.env_cfg.items() if k != "num_envs"},
                "quality": quality,
                "description": f"{cfg.name}: {quality} quality, {settings_text(cfg, quality)}",
                "reference_returns": {k: reference[k] for k in ("random", "expert", "episodes", "seed", "source")},
                "team_reward_rule": team_reward_rule(self.probe, transitions, self.spec),
                "behaviour": behaviour,
                **({"obs_mask": self.spec["obs_mask"]} if "obs_mask" in self.spec else {}),
                "generation": {
                    "command": self.command, "seed": cfg.seed, "versions": package_versions(),
                    "config": OmegaConf.to_yaml(cfg), "collect_key": self.quality_key(quality),
                },
            },
            overwrite=True,
        )


def settings_text(cfg: DictConfig, quality: str) -> str:
    settings = cfg.qualities[quality]
    text = f"{settings.episodes} episodes"
    if settings.mix:
        text += ", mixture " + ", ".join(f"{k} {v}" for k, v in settings.mix.items())
    if settings.noise_std or settings.random_prob:
        text += f", noise std {settings.noise_std}, random actions {settings.random_prob:.0%}"
    return text


def run_collect(cfg: DictConfig, command: str | None = None, on_chunk=None) -> dict:
    """Train or script the behaviour, measure the reference returns, write every quality's dataset.

    ``on_chunk(quality, number)`` is called after each newly collected chunk is saved (tests use
    it to interrupt a collection deterministically). Returns the dataset paths, the reference
    returns, the ladder (with normalised scores) and which entries were picked.
    """
    collection = Collection(cfg, command, on_chunk)
    try:
        return collection.run()
    finally:
        collection.close()

