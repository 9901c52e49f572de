import sys

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from lightning_marl.envs import env_spec, make_env, rollout_returns
from lightning_marl.envs.smax import FIRST_ATTACK, focus_fire
from lightning_marl.errors import ConfigError

pytest.importorskip("jaxmarl")

E, T = 6, 30  # envs, max_steps (one compile for the whole module: about 7-11 s)
N, K = 3, 8  # 3m: 3 allies, 5 moves + 3 enemies to shoot


def random_valid(mask, generator):
    return torch.multinomial(mask.reshape(-1, K).float(), 1, generator=generator).reshape(mask.shape[:-1])


@pytest.fixture(scope="module")
def env():
    return make_env("smax", "3m", num_envs=E, max_steps=T, seed=0)


@pytest.fixture(scope="module")
def rollout(env):
    """80 steps of random valid actions with auto-reset: [E, 80] steps."""
    generator = torch.Generator().manual_seed(0)
    env.set_seed(0)
    td, steps = env.reset(), []
    for _ in range(80):
        td["agents", "action"] = random_valid(td["agents", "action_mask"], generator)
        td, next_td = env.step_and_maybe_reset(td)
        steps.append(td)
        td = next_td
    return torch.stack(steps, dim=1)


def test_contract_keys_dtypes_shapes(env, rollout):
    spec = env_spec(env)
    o, s = spec["obs_dim"], spec["state_dim"]
    steps = rollout.shape[1]
    expected = {
        ("agents", "observation"): (torch.float32, (E, steps, N, o)),
        ("agents", "action_mask"): (torch.bool, (E, steps, N, K)),
        ("agents", "action"): (torch.int64, (E, steps, N)),
        "state": (torch.float32, (E, steps, s)),
        ("next", "agents", "observation"): (torch.float32, (E, steps, N, o)),
        ("next", "agents", "action_mask"): (torch.bool, (E, steps, N, K)),
        ("next", "state"): (torch.float32, (E, steps, s)),
        ("next", "agents", "reward"): (torch.float32, (E, steps, N, 1)),
        ("next", "reward"): (torch.float32, (E, steps, 1)),
    }
    for flag in ("done", "terminated", "truncated", "won"):
        expected[flag] = expected[("next", flag)] = (torch.bool, (E, steps, 1))
    for key, (dtype, shape) in expected.items():
        assert rollout[key].dtype == dtype, key
        assert rollout[key].shape == shape, key


def test_env_spec_and_check_env_specs(env):
    assert env_spec(env) == {
        "n_agents": 3, "agent_names": ["ally_0", "ally_1", "ally_2"], "obs_dim": 75, "state_dim": 72,
        "discrete": True, "n_actions": K, "max_steps": T, "team_reward_rule": "the environment's shared team reward",
    }
    check_env_specs(env, seed=1)


def test_actions_respect_masks_and_stop_is_always_available(rollout):
    mask = rollout["agents", "action_mask"]
    taken = mask.gather(-1, rollout["agents", "action"].unsqueeze(-1))
    assert taken.all()
    assert mask[..., 4].all()  # stop
    assert mask[..., FIRST_ATTACK:].any() and not mask[..., FIRST_ATTACK:].all()  # enemies come in and out of range


def test_team_reward_is_the_shared_reward(rollout):
    agent_rewards = rollout["next", "agents", "reward"]
    assert torch.equal(agent_rewards, agent_rewards[..., :1, :].expand_as(agent_rewards))
    assert torch.equal(rollout["next", "reward"], agent_rewards[..., 0, :])
    assert rollout["next", "reward"].sum() > 0 and (rollout["next", "reward"] >= 0).all()


def test_episodes_end_and_reset_env_by_env(rollout):
    done = rollout["next", "done"].squeeze(-1)
    terminated, truncated = rollout["next", "terminated"].squeeze(-1), rollout["next", "truncated"].squeeze(-1)
    assert torch.equal(done, terminated | truncated) and not (terminated & truncated).any()
    assert done.sum() >= E, "random 3m battles should end within 80 steps"
    assert not rollout["done"].any()  # every step starts from a live state
    # Continuity: where an env goes on, the next step starts from this step's next observation.
    go_on = ~done[:, :-1]
    now, later = rollout["next", "agents", "observation"][:, :-1], rollout["agents", "observation"][:, 1:]
    assert torch.equal(now[go_on], later[go_on])
    # A reset env starts fresh: every ally alive (all four moves available), a new battle.
    after = rollout["agents", "action_mask"][:, 1:][done[:, :-1]]
    assert after[..., :4].all()
    assert not torch.equal(now[done[:, :-1]], later[done[:, :-1]])


def test_time_limit_truncates(rollout):
    truncated = rollout["next", "truncated"].squeeze(-1)
    episode_length = torch.zeros(E, dtype=torch.long)
    for t in range(truncated.shape[1]):
        episode_length += 1
        ends = rollout["next", "done"][:, t].squeeze(-1)
        assert (episode_length[truncated[:, t]] == T).all()
        assert (episode_length[ends & ~truncated[:, t]] <= T).all()
        episode_length[ends] = 0


def test_win_rate_of_focus_fire_and_random(env):
    scripted = rollout_returns(env, focus_fire, episodes=12, seed=3)
    generator = torch.Generator().manual_seed(0)
    random = rollout_returns(env, lambda obs, mask: random_valid(mask, generator), episodes=12, seed=3)
    assert scripted["win_rate"] >= 0.25 and random["win_rate"] == 0.0
    assert scripted["mean"] > random["mean"] + 0.5


def test_same_seed_same_battle(env):
    firsts = []
    for seed in (4, 4, 5):
        env.set_seed(seed)
        firsts.append(env.reset()["agents", "observation"].clone())
    assert torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[0], firsts[2])


def test_other_maps_build_their_specs():
    spec = env_spec(make_env("smax", "5m_vs_6m", num_envs=2))  # traced, not compiled
    assert (spec["n_agents"], spec["n_actions"], spec["max_steps"]) == (5, 5 + 6, 100)


def test_bad_task_and_missing_extra(monkeypatch):
    with pytest.raises(ConfigError, match="3m"):
        make_env("smax", "4m", num_envs=2)
    monkeypatch.setitem(sys.modules, "jaxmarl", None)
    with pytest.raises(ConfigError, match=r'pip install "lightning_marl\[smax\]"'):
        make_env("smax", "3m", num_envs=2)
