"""Dataset collection and the built-in recipe cache."""

import dataclasses

import pytest
import torch

from lightning_marl.collect import recipes
from lightning_marl.collect.behaviour import navigation_heuristic
from lightning_marl.collect.collector import collect_transitions
from lightning_marl.data import schema
from lightning_marl.data.dataset import load_dataset
from lightning_marl.envs import env_spec, make_env
from lightning_marl.envs.contract import TEAM_REWARD_SHARED
from lightning_marl.errors import ConfigError


def test_collected_vmas_transitions_follow_the_contract():
    env = make_env("vmas", "navigation", num_envs=3, max_steps=7, n_agents=2)
    spec = env_spec(env)
    td = collect_transitions(env, navigation_heuristic(spec), episodes=4, spec=spec, progress=False)
    assert td.shape == (28,)  # 4 complete episodes of 7 steps, the partial ones dropped
    assert torch.equal(td[schema.EPISODE], torch.arange(4).repeat_interleave(7))
    assert td[schema.TRUNCATED].sum() == 4 and td[schema.ACTION].abs().max() <= 1
    # next observation of step t is the observation of step t+1 within an episode
    episode0 = td[td[schema.EPISODE] == 0]
    assert torch.equal(episode0[schema.NEXT_OBS][:-1], episode0[schema.OBS][1:])
    assert torch.allclose(td[schema.REWARD], td[schema.AGENT_REWARD].mean(1))


def test_recipe_is_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(recipes.DATA_ENV, str(tmp_path))
    tiny = recipes.Recipe(
        description="tiny navigation", env={"name": "vmas", "task": "navigation", "max_steps": 5,
                                            "params": {"n_agents": 2}},
        episodes=6, behaviour="navigation_heuristic", mixture={"0.1": 0.5, "random": 0.5}, num_envs=3,
        reference_episodes=6,
    )
    monkeypatch.setitem(recipes.RECIPES, "tiny", tiny)
    path = recipes.ensure_recipe("tiny", progress=False)
    assert path == tmp_path / "tiny-v1"
    ds = load_dataset(path, verify="always")
    meta = ds.metadata
    assert meta["n_episodes"] == 6 and meta["n_transitions"] == 30 and meta["quality"] == "mixed"
    reference = meta["reference_returns"]
    assert reference["expert"] > reference["random"]
    assert meta["generation"]["versions"]["torch"] == torch.__version__
    stamp = (path / "metadata.json").stat().st_mtime_ns
    assert recipes.ensure_recipe("tiny") == path
    assert (path / "metadata.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="no dataset recipe 'nope'"):
        recipes.ensure_recipe("nope")


def test_matrix_recipe_reference_returns(tmp_path, monkeypatch):
    monkeypatch.setenv(recipes.DATA_ENV, str(tmp_path))
    ds = load_dataset(recipes.ensure_recipe("climbing_coordinated", progress=False))
    meta = ds.metadata
    assert meta["n_episodes"] == 2000 and meta["quality"] == "coordinated"
    assert meta["reference_returns"]["expert"] == 11.0
    assert abs(meta["reference_returns"]["random"] - (-31 / 9)) < 0.5  # uniform random over the 9 payoffs
    joint = ds.transitions[schema.ACTION]
    assert (joint[:, 0] == joint[:, 1]).all()
    assert 0.2 < (joint[:, 0] == 0).float().mean() < 0.3


def test_discrete_mixture_noise_is_a_per_step_random_action_probability():
    spec = {"n_agents": 3, "n_actions": 8, "discrete": True}
    recipe = dataclasses.replace(recipes.RECIPES["smax_3m"], num_envs=4000)
    act, on_reset = recipes._mixture_policy(recipe, spec, torch.Generator().manual_seed(0))
    on_reset(torch.ones(4000, dtype=torch.bool))
    mask = torch.ones(4000, 3, 8, dtype=torch.bool)
    mask[..., 5:] = False
    mask[:, 0, 6] = True  # ally 0 has enemy 1 in range: the heuristic shoots (action 6); the others move east (1)
    action = act(torch.zeros(4000, 3, 4), mask)
    assert mask.gather(-1, action.unsqueeze(-1)).all()
    off = (action != torch.tensor([6, 1, 1])).float()  # where the action is not the expert's
    # random with probability 0.1 / 0.5 / 1.0 (40 / 40 / 20 % of envs), mean 0.44; a random valid action
    # differs from the expert's with probability 5/6 (ally 0: 6 valid actions) or 4/5 (5 valid actions)
    assert torch.allclose(off.mean(0), 0.44 * torch.tensor([5 / 6, 4 / 5, 4 / 5]), atol=0.03)
    off = off.mean(-1)
    assert 0.15 < (off == 0).float().mean() < 0.45  # mostly the low-noise episodes copy the expert exactly


def test_smax_recipe_builds_a_valid_dataset_with_wins_and_references(tmp_path, monkeypatch):
    pytest.importorskip("jaxmarl")
    monkeypatch.setenv(recipes.DATA_ENV, str(tmp_path))
    full = recipes.RECIPES["smax_3m"]
    assert (full.env["name"], full.env["task"], full.episodes, full.behaviour) == ("smax", "3m", 1000, "focus_fire")
    # the real recipe, fewer and shorter episodes: 6 envs of 30 steps as tests/envs/test_smax.py (one compile)
    tiny = dataclasses.replace(full, env={**full.env, "max_steps": 30}, episodes=12, num_envs=6,
                               reference_episodes=12)
    monkeypatch.setitem(recipes.RECIPES, "smax_tiny", tiny)
    ds = load_dataset(recipes.ensure_recipe("smax_tiny", progress=False), verify="always")
    meta, td = ds.metadata, ds.transitions
    assert meta["n_episodes"] == 12 and meta["quality"] == "mixed" and meta["spec"]["discrete"]
    assert meta["team_reward_rule"] == TEAM_REWARD_SHARED
    won, terminated = td[schema.WON].reshape(-1), td[schema.TERMINATED].reshape(-1)
    assert won.dtype == torch.bool and won.any() and not (won & ~terminated).any()  # seeded: 1 win of 12
    reference = meta["reference_returns"]
    assert reference["expert"] > reference["random"] + 0.5
    assert "focus_fire" in reference["source"]


def test_agree_two_modes_recipe_holds_both_modes_and_nothing_between(tmp_path, monkeypatch):
    monkeypatch.setenv(recipes.DATA_ENV, str(tmp_path))
    ds = load_dataset(recipes.ensure_recipe("agree_two_modes", progress=False))
    action = ds.transitions[schema.ACTION].squeeze(-1)  # [T, 3]
    side = action.mean(-1).sign()
    assert (side > 0).sum() == (side < 0).sum() == 1000
    assert (action.sign() == side.unsqueeze(-1)).float().mean() > 0.99  # agents agree within an episode
    references = ds.metadata["reference_returns"]
    assert references["expert"] == 1.0 and references["random"] < 0.6
    assert ds.metadata["quality"] == "expert" and len(set(ds.transitions["episode"].tolist())) == 2000
