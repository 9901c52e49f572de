import pytest
import torch

from lightning_marl.collect.behaviour import navigation_heuristic, noisy, uniform_random
from lightning_marl.envs import env_spec, make_env, rollout_returns

DISCRETE = {"discrete": True, "n_actions": 3}
CONTINUOUS = {"discrete": False, "action_dim": 2, "action_low": [-1.0, 0.0], "action_high": [1.0, 0.5]}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_uniform_random_discrete_covers_available_actions_only():
    obs = torch.zeros(2000, 2, 1)
    mask = torch.ones(2000, 2, 3, dtype=torch.bool)
    mask[:, 1, :2] = False  # agent 1 may only take action 2
    actions = uniform_random(DISCRETE, gen())(obs, mask)
    assert actions.shape == (2000, 2) and actions.dtype == torch.int64
    assert (actions[:, 1] == 2).all()
    counts = torch.bincount(actions[:, 0], minlength=3).float() / 2000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.05)
    unmasked = uniform_random(DISCRETE, gen())(obs, None)
    assert set(unmasked.unique().tolist()) == {0, 1, 2}


def test_uniform_random_continuous_fills_the_bounds():
    actions = uniform_random(CONTINUOUS, gen())(torch.zeros(1000, 3, 5), None)
    assert actions.shape == (1000, 3, 2) and actions.dtype == torch.float32
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.5])
    assert (actions >= low).all() and (actions <= high).all()
    assert torch.allclose(actions.mean(dim=(0, 1)), (low + high) / 2, atol=0.05)
    assert torch.equal(actions, uniform_random(CONTINUOUS, gen())(torch.zeros(1000, 3, 5), None))


def test_noisy_without_noise_is_the_policy():
    policy = lambda obs, mask: torch.full((*obs.shape[:2], 2), 0.25)
    obs = torch.zeros(50, 3, 4)
    assert torch.equal(noisy(policy, 0.0, 0.0, CONTINUOUS, gen())(obs, None), policy(obs, None))
    greedy = lambda obs, mask: torch.ones(obs.shape[:2], dtype=torch.int64)
    assert torch.equal(noisy(greedy, 0.5, 0.0, DISCRETE, gen())(obs, None), greedy(obs, None))


def test_noisy_is_clipped_and_mixes_in_random_actions():
    policy = lambda obs, mask: torch.full((*obs.shape[:2], 2), 0.25)
    obs = torch.zeros(2000, 3, 4)
    actions = noisy(policy, 1.0, 0.0, CONTINUOUS, gen())(obs, None)
    assert (actions >= torch.tensor([-1.0, 0.0])).all() and (actions <= torch.tensor([1.0, 0.5])).all()
    assert (actions != 0.25).float().mean() > 0.5  # noise moved most actions
    small = noisy(policy, 0.01, 0.0, CONTINUOUS, gen())(obs, None)
    assert (small - 0.25).abs().max() < 0.1 and (small[..., 0] - 0.25).std() == pytest.approx(0.02, rel=0.1)

    greedy = lambda obs, mask: torch.zeros(obs.shape[:2], dtype=torch.int64)
    mask = torch.ones(2000, 3, 3, dtype=torch.bool)
    mask[..., 1] = False
    mixed = noisy(greedy, 0.0, 0.3, DISCRETE, gen())(obs, mask)
    assert (mixed != 1).all()  # random picks respect the mask
    assert (mixed == 2).float().mean() == pytest.approx(0.15, abs=0.03)  # 0.3 random x 1/2 available


def test_navigation_heuristic_steers_toward_the_goal():
    spec = {"discrete": False, "obs_dim": 6, "action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]}
    obs = torch.zeros(2, 1, 6)
    obs[0, 0, 4:6] = torch.tensor([0.2, -0.1])  # goal is at -offset: left and up
    obs[1, 0, 4:6] = torch.tensor([5.0, 0.0])  # far away: the force saturates
    action = navigation_heuristic(spec)(obs, None)
    assert action[0, 0, 0] < 0 and action[0, 0, 1] > 0
    assert torch.equal(action[1, 0], torch.tensor([-1.0, 0.0]))
    obs[0, 0, 2:4] = torch.tensor([-1.0, 0.0])  # already moving left fast: damping brakes
    assert navigation_heuristic(spec)(obs, None)[0, 0, 0] > action[0, 0, 0]


def test_navigation_heuristic_beats_random_clearly():
    env = make_env("vmas", "navigation", num_envs=32, max_steps=100, n_agents=3, seed=0)
    spec = env_spec(env)
    random = rollout_returns(env, uniform_random(spec, gen()), episodes=32, seed=0)
    expert = rollout_returns(env, navigation_heuristic(spec), episodes=32, seed=0)
    assert expert["mean"] > 2.0 and random["mean"] < 0.5
    assert expert["mean"] > random["mean"] + 2.0
