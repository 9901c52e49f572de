import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from lightning_marl.envs import env_spec, make_env
from lightning_marl.errors import ConfigError

pytest.importorskip("mpe2")

E, T = 3, 6


def play(env, steps, seed=0, generator_seed=0):
    generator = torch.Generator().manual_seed(generator_seed)
    env.set_seed(seed)
    td, out = env.reset(), []
    for _ in range(steps):
        td["agents", "action"] = torch.randint(0, 5, td["agents", "observation"].shape[:2], generator=generator)
        td, next_td = env.step_and_maybe_reset(td)
        out.append(td)
        td = next_td
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("task,n,o,s", [("simple_spread_v3", 3, 18, 54), ("simple_tag_v3", 3, 16, 62)])
def test_contract_keys_dtypes_shapes(task, n, o, s):
    env = make_env("mpe", task, num_envs=E, max_steps=T)
    check_env_specs(env)
    spec = env_spec(env)
    assert (spec["n_agents"], spec["obs_dim"], spec["state_dim"], spec["n_actions"]) == (n, o, s, 5)
    assert spec["discrete"] and spec["max_steps"] == T
    rollout = play(env, 2 * T + 1)
    steps = rollout.shape[1]
    expected = {
        ("agents", "observation"): (torch.float32, (E, steps, n, o)),
        ("agents", "action_mask"): (torch.bool, (E, steps, n, 5)),
        ("agents", "action"): (torch.int64, (E, steps, n)),
        "state": (torch.float32, (E, steps, s)),
        ("next", "agents", "observation"): (torch.float32, (E, steps, n, o)),
        ("next", "state"): (torch.float32, (E, steps, s)),
        ("next", "agents", "reward"): (torch.float32, (E, steps, n, 1)),
        ("next", "reward"): (torch.float32, (E, steps, 1)),
    }
    for flag in ("done", "terminated", "truncated"):
        expected[flag] = expected[("next", flag)] = (torch.bool, (E, steps, 1))
    for key, (dtype, shape) in expected.items():
        assert rollout[key].dtype == dtype, key
        assert rollout[key].shape == shape, key
    assert rollout["agents", "action_mask"].all()
    truncated = rollout["next", "truncated"].squeeze(-1)
    assert truncated[:, [T - 1, 2 * T - 1]].all() and truncated.sum() == 2 * E
    assert not rollout["next", "terminated"].any()
    assert torch.allclose(rollout["next", "reward"], rollout["next", "agents", "reward"].mean(-2))
    # after the time limit each env starts a new episode
    assert not torch.equal(rollout["agents", "observation"][:, T], rollout["next", "agents", "observation"][:, T - 1])
    assert torch.equal(rollout["agents", "observation"][:, 1], rollout["next", "agents", "observation"][:, 0])


def test_rewards_and_observations_are_mpes_own():
    from mpe2 import simple_spread_v3

    rollout = play(make_env("mpe", "simple_spread_v3", num_envs=2, max_steps=T), T, seed=11)
    raw = simple_spread_v3.parallel_env(max_cycles=T)
    observations, _ = raw.reset(seed=12)  # env 1 of the batch is seeded with seed + 1
    assert np.allclose(observations["agent_1"], rollout["agents", "observation"][1, 0, 1].numpy())
    for t in range(T):
        actions = {f"agent_{j}": int(rollout["agents", "action"][1, t, j]) for j in range(3)}
        observations, rewards, _, _, _ = raw.step(actions)
        assert np.allclose([rewards[f"agent_{j}"] for j in range(3)], rollout["next", "agents", "reward"][1, t, :, 0])
        assert np.allclose(raw.state(), rollout["next", "state"][1, t].numpy())


@pytest.mark.parametrize("continuous", [False, True])
def test_simple_tag_prey_flees_the_nearest_predator(continuous):
    env = make_env("mpe", "simple_tag_v3", num_envs=6, max_steps=T, seed=2, continuous_actions=continuous)
    td = env.reset()
    worlds = [sub.unwrapped.world for sub in env._envs]
    before = [w.agents[3].state.p_pos.copy() for w in worlds]
    nearest = [min((a.state.p_pos for a in w.agents[:3]), key=lambda p: np.linalg.norm(p - b))
               for w, b in zip(worlds, before)]
    td["agents", "action"] = env.full_action_spec["agents", "action"].zero()
    out = env.step(td)["next"]
    assert out["agents", "observation"].shape == (6, 3, 16)
    # mpe2 moves positions before it applies forces: the first step shows in the velocity
    moved_away = [float(w.agents[3].state.p_vel @ (b - p)) for w, b, p in zip(worlds, before, nearest)]
    inside = [np.abs(b).max() < 0.6 for b in before]
    assert any(inside) and all(m > 0 for m, i in zip(moved_away, inside) if i)
    if continuous:
        spec = env_spec(env)
        assert spec["action_low"] == [0.0] * 5 and spec["action_high"] == [1.0] * 5


def test_bad_task_and_params_are_refused():
    with pytest.raises(ConfigError, match="simple_spread_v3"):
        make_env("mpe", "simple_spread", num_envs=2)
    with pytest.raises(ConfigError, match="refused"):
        make_env("mpe", "simple_spread_v3", num_envs=2, no_such_param=1)


def test_rollout_returns_counts_whole_episodes():
    from lightning_marl.envs import rollout_returns

    env = make_env("mpe", "simple_tag_v3", num_envs=2, max_steps=T)
    still = rollout_returns(env, lambda obs, mask: torch.zeros(obs.shape[:2], dtype=torch.int64), episodes=3)
    assert still["episodes"] == 3 and len(still["returns"]) == 3 and still["win_rate"] is None
    assert all(r >= 0 and r % 10 == 0 for r in still["returns"])  # +10 per catch, shared by the predators
