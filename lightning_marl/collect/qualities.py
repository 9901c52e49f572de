"""Dataset qualities cut from a ladder of behaviour policies.

A *ladder* lists the behaviour policies of a task from least to most trained, each with its
measured return: the PPO checkpoints in training order, or, for a scripted heuristic, the
heuristic with a share of uniform random actions falling from 100 % to 0 %. The qualities:

- ``random``: the uniform random policy;
- ``expert``: the ladder entry with the highest measured return (the best policy reached within
  the training budget);
- ``medium``: the last ladder entry before the expert whose normalised score lies in
  ``medium_range`` (30-60 by default) between the random and expert reference returns (so it
  works for negative returns): the most trained policy still in the band, not an untrained one
  that happens to score there (a still policy beats random actions in MuJoCo); if none does,
  the entry closest to the middle of the range, recorded as outside it;
- ``medium-replay``: the replay of training up to medium: equal shares of episodes from every
  ladder entry up to and including medium, acting as during training (sampled actions);
- ``medium-expert``: half medium, half expert; any other quality is a user mixture ``mix``.

Example:
    >>> ladder = [{"return": -5.0}, {"return": -3.0}, {"return": -2.0}, {"return": 0.0}]
    >>> pick = select_qualities(ladder, {"random": -6.0, "expert": 0.0}, (30.0, 60.0))
    >>> pick["medium"], pick["expert"], [round(s) for s in pick["scores"]]
    (1, 3, [17, 50, 67, 100])
    >>> select_qualities([{"return": r} for r in (-3.0, -4.0, -3.5, 0.0)], {"random": -6.0, "expert": 0.0},
    ...                  (30.0, 60.0))["medium"]
    2
"""

from __future__ import annotations

import torch

from lightning_marl.collect.behaviour import focus_fire_heuristic, navigation_heuristic, noisy, uniform_random
from lightning_marl.collect.online_training import load_behaviour
from lightning_marl.data.dataset import normalised_score
from lightning_marl.errors import ConfigError, TrainingError

SCRIPTED = {"navigation_heuristic": navigation_heuristic, "focus_fire": focus_fire_heuristic}
SCRIPTED_RANDOM_PROBS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]


def select_qualities(ladder: list[dict], reference: dict, medium_range) -> dict:
    """Which ladder entries are expert and medium, with every entry's normalised score.

    Raises TrainingError when the best entry is no better than uniform random.
    """
    returns = [entry["return"] for entry in ladder]
    expert = max(range(len(returns)), key=lambda i: returns[i])
    if reference["expert"] <= reference["random"]:
        raise TrainingError(
            f"the best behaviour policy (return {reference['expert']:.4g}) is no better than uniform random "
            f"({reference['random']:.4g}): qualities cannot be told apart. Raise train.env_steps (training "
            "resumes from its last checkpoint) or check the environment's reward"
        )
    scores = [normalised_score(r, reference) for r in returns]
    low, high = medium_range
    inside = [i for i in range(expert + 1) if low <= scores[i] <= high]
    if inside:
        medium, in_range = inside[-1], True
    else:
        middle = (low + high) / 2
        medium, in_range = min(range(expert + 1), key=lambda i: abs(scores[i] - middle)), False
    return {"expert": expert, "medium": medium, "medium_in_range": in_range, "scores": scores}


def scripted_ladder(name: str) -> list[dict]:
    """The ladder of a scripted heuristic: its policy with falling shares of random actions."""
    if name not in SCRIPTED:
        raise ConfigError(f"behaviour {name!r} is neither 'trained' nor a scripted heuristic ({', '.join(SCRIPTED)})")
    return [{"label": f"{name} with {p:.0%} random actions",
             "policy": {"kind": "scripted", "name": name, "random_prob": p}} for p in SCRIPTED_RANDOM_PROBS]


def checkpoint_ladder(index: list[dict], algorithm: str = "mappo") -> list[dict]:
    """The ladder of trained checkpoints (``train_behaviour``'s index), in training order."""
    return [{"label": f"{algorithm.upper()} checkpoint at iteration {e['iteration']} ({e['env_steps']} env steps)",
             "policy": {"kind": "checkpoint", "file": e["file"], "iteration": e["iteration"]},
             "return": e["eval_return"], "env_steps": e["env_steps"]} for e in index]


def build_act(policy: dict, spec: dict, task, training_dir, generator: torch.Generator):
    """The ``act(observation, mask)`` of a policy descriptor.

    Descriptors: ``{"kind": "random"}``, ``{"kind": "scripted", "name", "random_prob"}``,
    ``{"kind": "checkpoint", "file", "mode": "greedy" | "sample"}``; any of them may add
    ``noise_std`` and ``random_prob`` (exploration noise, see ``behaviour.noisy``).
    """
    kind = policy["kind"]
    if kind == "random":
        return uniform_random(spec, generator)
    if kind == "scripted":
        act = SCRIPTED[policy["name"]](spec)
    elif kind == "checkpoint":
        behaviour = load_behaviour(training_dir / policy["file"], task)
        act = behaviour.env_act(deterministic=policy.get("mode", "greedy") == "greedy", generator=generator)
    else:
        raise ValueError(f"unknown policy kind {kind!r}")
    noise_std, random_prob = float(policy.get("noise_std", 0.0)), float(policy.get("random_prob", 0.0))
    if noise_std > 0 or random_prob > 0:
        act = noisy(act, noise_std, random_prob, spec, generator)
    return act


def _with_settings(policy: dict, settings) -> dict:
    """A ladder policy acting with a quality's settings (mode and extra noise)."""
    policy = dict(policy)
    if policy["kind"] == "checkpoint":
        policy["mode"] = settings.mode
    policy["noise_std"] = float(settings.noise_std)
    # A scripted ladder entry's own random share and the quality's add up as independent draws.
    own = float(policy.get("random_prob", 0.0))
    policy["random_prob"] = 1 - (1 - own) * (1 - float(settings.random_prob))
    return policy


def _split(total: int, weights: list[float]) -> list[int]:
    """``total`` split by ``weights`` into integers summing to ``total`` (largest remainders)."""
    weights = [w / sum(weights) for w in weights]
    counts = [int(total * w) for w in weights]
    order = sorted(range(len(weights)), key=lambda i: total * weights[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan_quality(quality: str, episodes: int, ladder: list[dict], pick: dict, settings_of) -> list[dict]:
    """Segments ``[{"policy", "episodes", "source"}]`` that make up ``episodes`` of ``quality``.

    ``settings_of(quality)`` gives a quality's QualityConfig (mode, noise, mix).

    Example:
        >>> from lightning_marl.collect.config import QualityConfig
        >>> ladder = [{"label": f"c{i}", "policy": {"kind": "checkpoint", "file": f"{i}.pt"}} for i in range(3)]
        >>> pick = {"medium": 1, "expert": 2}
        >>> [s["episodes"] for s in plan_quality("medium-replay", 5, ladder, pick, lambda q: QualityConfig())]
        [3, 2]
    """
    settings = settings_of(quality)
    mix = dict(settings.mix) or ({"medium": 0.5, "expert": 0.5} if quality == "medium-expert" else {})
    if mix:
        segments = []
        for part, count in zip(mix, _split(episodes, list(mix.values()))):
            if count:
                segments += plan_quality(part, count, ladder, pick, settings_of)
        return segments
    if quality == "random":
        return [{"policy": {"kind": "random"}, "episodes": episodes, "source": "uniform random policy"}]
    if quality in ("expert", "medium"):
        entry = ladder[pick[quality]]
        return [{"policy": _with_settings(entry["policy"], settings), "episodes": episodes,
                 "source": f"{quality}: {entry['label']}"}]
    if quality == "medium-replay":
        entries = ladder[: pick["medium"] + 1]
        counts = _split(episodes, [1.0] * len(entries))
        # The replay acts as training did: sampled actions (the quality's noise settings still apply).
        return [{"policy": {**_with_settings(entry["policy"], settings),
                            **({"mode": "sample"} if entry["policy"]["kind"] == "checkpoint" else {})},
                 "episodes": count, "source": f"medium-replay: {entry['label']}"}
                for entry, count in zip(entries, counts) if count]
    raise ConfigError(f"unknown quality {quality!r}")
