import pytest
import torch
from torchrl.envs.utils import check_env_specs

from lightning_marl.envs import env_spec, make_env, payoff
from lightning_marl.errors import ConfigError

CLIMBING = [[11, -30, 0], [-30, 7, 6], [0, 0, 5]]


def joint(*actions):
    return torch.tensor([actions])


def test_climbing_payoff_table():
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    actions = torch.stack([rows.flatten(), cols.flatten()], dim=-1)  # row = agent 0
    assert payoff("climbing", actions).reshape(3, 3).tolist() == CLIMBING
    assert payoff("climbing", joint(0, 0)).item() == 11
    assert payoff("climbing", joint(0, 1)).item() == -30
    assert payoff("climbing", joint(1, 2)).item() == 6
    assert payoff("climbing", joint(2, 1)).item() == 0


def test_penalty_payoff_and_k():
    assert payoff("penalty", joint(0, 0)).item() == 10
    assert payoff("penalty", joint(0, 2)).item() == -100
    assert payoff("penalty", joint(2, 0)).item() == -100
    assert payoff("penalty", joint(1, 1)).item() == 2
    assert payoff("penalty", joint(0, 2), k=-7).item() == -7


def test_agree_discrete_payoff():
    actions = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]])
    assert payoff("agree", actions).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_agree_continuous_payoff():
    actions = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
    reward = payoff("agree", actions.unsqueeze(-1))
    assert reward[0].item() == 1.0 and reward[1].item() == 1.0
    assert reward[2].item() == pytest.approx(1 - 4 / 3)  # mixed signs: min(4/3, 8/3)
    assert reward[3].item() == pytest.approx(0.0)
    assert (reward[2:] < 1).all()


def test_payoff_refuses_wrong_inputs():
    with pytest.raises(ConfigError, match="climbing"):
        payoff("chicken", joint(0, 0))
    with pytest.raises(ValueError):
        payoff("climbing", torch.zeros(1, 2, 1))
    with pytest.raises(ValueError):
        payoff("climbing", joint(0, 0, 1))
    with pytest.raises(ValueError, match="n_agents=4"):
        payoff("agree", joint(0, 0, 1), n_agents=4)
    with pytest.raises(ValueError, match="continuous"):
        payoff("agree", joint(0, 0, 1), continuous=True)


GAMES = [("climbing", {}, 2, 3), ("penalty", {"k": -50}, 2, 3), ("agree", {"n_agents": 4}, 4, 2)]


@pytest.mark.parametrize("game,params,n,k", GAMES)
def test_discrete_game_speaks_the_contract(game, params, n, k):
    e = 5
    env = make_env("matrix", game, num_envs=e, **params)
    check_env_specs(env)
    td = env.reset()
    assert td["agents", "observation"].dtype == torch.float32
    assert td["agents", "observation"].shape == (e, n, 1) and (td["agents", "observation"] == 0).all()
    assert td["state"].shape == (e, n) and td["state"].dtype == torch.float32
    assert td["agents", "action_mask"].shape == (e, n, k) and td["agents", "action_mask"].dtype == torch.bool
    assert td["agents", "action_mask"].all()
    for key in ("done", "terminated", "truncated"):
        assert td[key].shape == (e, 1) and td[key].dtype == torch.bool and not td[key].any()

    actions = torch.randint(0, k, (e, n), generator=torch.Generator().manual_seed(0))
    td["agents", "action"] = actions
    out = env.step(td)["next"]
    team = payoff(game, actions, **params).unsqueeze(-1)  # the env params fit payoff too
    assert out["reward"].shape == (e, 1) and out["reward"].dtype == torch.float32
    assert torch.equal(out["reward"], team)
    assert out["agents", "reward"].shape == (e, n, 1) and out["agents", "reward"].dtype == torch.float32
    assert torch.equal(out["agents", "reward"], team.unsqueeze(1).expand(e, n, 1))
    assert out["agents", "observation"].shape == (e, n, 1) and out["state"].shape == (e, n)
    assert out["agents", "action_mask"].shape == (e, n, k)
    assert out["terminated"].all() and out["done"].all() and not out["truncated"].any()
    for key in ("done", "terminated", "truncated"):
        assert out[key].shape == (e, 1) and out[key].dtype == torch.bool


def test_continuous_agree_speaks_the_contract():
    env = make_env("matrix", "agree", num_envs=3, n_agents=3, continuous=True)
    check_env_specs(env)
    td = env.reset()
    assert ("agents", "action_mask") not in td.keys(include_nested=True)
    td["agents", "action"] = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]]).unsqueeze(-1)
    out = env.step(td)["next"]
    assert out["reward"].squeeze(-1).tolist() == pytest.approx([1.0, 1 - 4 / 3, 1.0])
    assert out["agents", "reward"].shape == (3, 3, 1)


def test_rollout_resets_after_every_step():
    env = make_env("matrix", "climbing", num_envs=2)
    rollout = env.rollout(4, break_when_any_done=False)
    assert rollout.batch_size == (2, 4)
    assert rollout["next", "done"].all() and not rollout["done"].any()


def test_env_spec():
    spec = env_spec(make_env("matrix", "climbing", num_envs=2))
    assert spec == {
        "n_agents": 2, "agent_names": ["agent_0", "agent_1"], "obs_dim": 1, "state_dim": 2,
        "discrete": True, "n_actions": 3, "max_steps": 1, "team_reward_rule": "the environment's shared team reward",
    }
    spec = env_spec(make_env("matrix", "agree", num_envs=2, n_agents=5, continuous=True))
    assert spec["n_agents"] == 5 and spec["state_dim"] == 5 and not spec["discrete"]
    assert spec["action_dim"] == 1 and spec["action_low"] == [-1.0] and spec["action_high"] == [1.0]


def test_bad_names_and_params_are_refused():
    with pytest.raises(ConfigError, match="climbing.*penalty.*agree"):
        make_env("matrix", "prisoners")
    with pytest.raises(ConfigError, match="matrix"):
        make_env("no_such_env", "climbing")
    with pytest.raises(ConfigError, match="valid params: k"):
        make_env("matrix", "penalty", n_agents=3)
    with pytest.raises(ConfigError, match="max_steps"):
        make_env("matrix", "climbing", max_steps=10)
    with pytest.raises(ConfigError, match="n_agents"):
        make_env("matrix", "agree", n_agents=1)
