import pytest
import torch
from torchrl.envs.libs.vmas import VmasEnv
from torchrl.envs.utils import check_env_specs

from lightning_marl.envs import env_spec, make_env
from lightning_marl.errors import ConfigError

E, N, T = 3, 3, 4  # envs, agents, max_steps


def random_actions(steps, seed=0):
    return torch.rand(steps, E, N, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def play(env, actions, seed=0):
    """Steps through ``actions`` [steps, E, N, 2] with auto-reset; returns the stacked steps."""
    env.set_seed(seed)
    td, steps = env.reset(), []
    for action in actions:
        td["agents", "action"] = action
        td, next_td = env.step_and_maybe_reset(td)
        steps.append(td)
        td = next_td
    return torch.stack(steps, dim=1)


@pytest.fixture(scope="module")
def navigation():
    return make_env("vmas", "navigation", num_envs=E, max_steps=T, n_agents=N, seed=0)


@pytest.fixture(scope="module")
def rollout(navigation):
    return play(navigation, random_actions(2 * T + 1))


@pytest.mark.parametrize("task", ["navigation", "balance", "simple_spread"])
def test_check_env_specs(task):
    check_env_specs(make_env("vmas", task, num_envs=2, max_steps=3))


def test_contract_keys_dtypes_shapes(navigation, rollout):
    o = env_spec(navigation)["obs_dim"]
    steps = rollout.shape[1]
    expected = {
        ("agents", "observation"): (torch.float32, (E, steps, N, o)),
        "state": (torch.float32, (E, steps, N * o)),
        ("agents", "action"): (torch.float32, (E, steps, N, 2)),
        ("next", "agents", "observation"): (torch.float32, (E, steps, N, o)),
        ("next", "state"): (torch.float32, (E, steps, N * o)),
        ("next", "agents", "reward"): (torch.float32, (E, steps, N, 1)),
        ("next", "reward"): (torch.float32, (E, steps, 1)),
    }
    for flag in ("done", "terminated", "truncated"):
        expected[flag] = expected[("next", flag)] = (torch.bool, (E, steps, 1))
    for key, (dtype, shape) in expected.items():
        assert rollout[key].dtype == dtype, key
        assert rollout[key].shape == shape, key
    assert ("agents", "action_mask") not in rollout.keys(include_nested=True)


def test_state_is_the_concatenated_observations(rollout):
    assert torch.equal(rollout["state"], rollout["agents", "observation"].flatten(-2))
    assert torch.equal(rollout["next", "state"], rollout["next", "agents", "observation"].flatten(-2))


def test_team_reward_is_the_mean_of_agent_rewards(rollout):
    team = rollout["next", "reward"]
    assert torch.allclose(team, rollout["next", "agents", "reward"].mean(-2))
    assert team.abs().sum() > 0


def test_per_agent_rewards_and_observations_are_vmas_own():
    actions = random_actions(T - 1, seed=3)
    ours = play(make_env("vmas", "navigation", num_envs=E, max_steps=T, n_agents=N, seed=5), actions, seed=5)
    raw = play(VmasEnv("navigation", num_envs=E, continuous_actions=True, n_agents=N, seed=5), actions, seed=5)
    for key in [("next", "agents", "reward"), ("next", "agents", "observation"), ("agents", "observation")]:
        assert torch.equal(ours[key], raw[key]), key


def test_truncation_at_max_steps_and_not_before(rollout):
    truncated = rollout["next", "truncated"].squeeze(-1)
    expected = torch.zeros_like(truncated)
    expected[:, T - 1] = expected[:, 2 * T - 1] = True
    assert torch.equal(truncated, expected)
    assert not rollout["next", "terminated"].any()  # random agents do not reach all goals in 4 steps
    assert torch.equal(rollout["next", "done"], rollout["next", "terminated"] | rollout["next", "truncated"])
    # the episode restarts after the time limit: a fresh step count and fresh positions
    assert rollout["step_count"][:, T].eq(0).all()
    assert not torch.equal(rollout["agents", "observation"][:, T], rollout["next", "agents", "observation"][:, T - 1])


def test_same_seed_same_rollout():
    actions = random_actions(T + 1, seed=1)
    runs = [play(make_env("vmas", "navigation", num_envs=E, max_steps=T, n_agents=N, seed=s), actions, seed=s) for s in (7, 7, 8)]
    assert torch.equal(runs[0]["next", "agents", "observation"], runs[1]["next", "agents", "observation"])
    assert torch.equal(runs[0]["next", "reward"], runs[1]["next", "reward"])
    assert not torch.equal(runs[0]["agents", "observation"], runs[2]["agents", "observation"])


def test_env_spec(navigation):
    spec = env_spec(navigation)
    assert spec == {
        "n_agents": 3, "agent_names": ["agent_0", "agent_1", "agent_2"], "obs_dim": 18, "state_dim": 54,
        "discrete": False, "action_dim": 2, "action_low": [-1.0, -1.0], "action_high": [1.0, 1.0], "max_steps": T,
        "team_reward_rule": "mean of the per-agent rewards the environment gives",
    }


def test_default_max_steps_and_scenario_params():
    env = make_env("vmas", "balance", num_envs=2, n_agents=2)
    spec = env_spec(env)
    assert spec["max_steps"] == 100 and spec["n_agents"] == 2


def test_bad_tasks_and_params_are_refused():
    with pytest.raises(ConfigError, match="navigation"):
        make_env("vmas", "navigaton", num_envs=2)
    with pytest.raises(ConfigError, match="not used"):
        make_env("vmas", "navigation", num_envs=2, no_such_param=1)
    with pytest.raises(ConfigError, match="several agent groups"):
        make_env("vmas", "simple_adversary", num_envs=2)
    with pytest.raises(ConfigError, match="continuous_actions"):
        make_env("vmas", "navigation", num_envs=2, continuous_actions="no")
    with pytest.raises(ConfigError, match="max_steps"):
        make_env("vmas", "navigation", num_envs=2, max_steps=0)


def test_team_reward_with_individual_rewards_is_their_mean():
    env = make_env("vmas", "navigation", num_envs=E, max_steps=T, n_agents=N, shared_rew=False)
    rollout = play(env, random_actions(T - 1))
    agent_rewards = rollout["next", "agents", "reward"]
    assert not torch.allclose(agent_rewards[..., :1, :], agent_rewards[..., 1:2, :])
    assert torch.allclose(rollout["next", "reward"], agent_rewards.mean(-2))


def test_task_completion_terminates_and_resets_only_that_env():
    from lightning_marl.collect.behaviour import navigation_heuristic

    env = make_env("vmas", "navigation", num_envs=4, max_steps=60, n_agents=1, seed=0)
    expert = navigation_heuristic(env_spec(env))
    rollout = env.rollout(
        60, policy=lambda td: td.set(("agents", "action"), expert(td["agents", "observation"], None)),
        break_when_any_done=False,
    )
    terminated = rollout["next", "terminated"].squeeze(-1)
    assert terminated[:, :-1].any(), "the expert should reach a goal within 59 steps"
    assert not (terminated & rollout["next", "truncated"].squeeze(-1)).any()
    step_count = rollout["step_count"].squeeze(-1)
    env_index, t = terminated[:, :-1].nonzero()[0]
    assert step_count[env_index, t + 1] == 0
    running = ~terminated[:, : t + 1].any(1)  # envs that have not finished an episode yet
    assert running.any() and (step_count[running, t + 1] == t + 1).all()


def test_discrete_actions_with_all_true_masks():
    env = make_env("vmas", "navigation", num_envs=E, max_steps=T, n_agents=N, continuous_actions=False, seed=0)
    check_env_specs(env)
    spec = env_spec(env)
    assert spec["discrete"] and spec["n_actions"] == 9 and "action_dim" not in spec
    td = env.reset()
    assert td["agents", "action_mask"].shape == (E, N, 9) and td["agents", "action_mask"].dtype == torch.bool
    assert td["agents", "action_mask"].all()
    # action 0 stays still; 6 = (x +, y stay) pushes along +x only
    td["agents", "action"] = torch.tensor([[0, 6, 0]] * E)
    out = env.step(td)["next"]
    velocity = out["agents", "observation"][..., 2:4]
    assert (velocity[:, [0, 2]] == 0).all()
    assert (velocity[:, 1, 0] > 0).all() and (velocity[:, 1, 1] == 0).all()
    assert out["agents", "action_mask"].all() and out["reward"].shape == (E, 1)
    assert env.rollout(T, break_when_any_done=False)["next", "truncated"][:, -1].all()


@pytest.mark.parametrize("continuous", [True, False])
def test_simple_tag_predators_learn_and_the_prey_flees(continuous):
    env = make_env("vmas", "simple_tag", num_envs=8, max_steps=T, continuous_actions=continuous, seed=1)
    check_env_specs(env)
    spec = env_spec(env)
    assert spec["n_agents"] == 3 and spec["agent_names"] == ["adversary_0", "adversary_1", "adversary_2"]
    td = env.reset()
    assert "prey" not in td.keys() and td["agents", "observation"].shape == (8, 3, 16)
    world = env.base_env._env.world
    prey, predators = world.agents[3], world.agents[:3]
    before = prey.state.pos.clone()
    nearest = torch.stack([p.state.pos for p in predators], 1)
    nearest = nearest[torch.arange(8), (nearest - before.unsqueeze(1)).norm(dim=-1).argmin(1)]
    td["agents", "action"] = env.full_action_spec["agents", "action"].zero()  # predators hold still
    out = env.step(td)["next"]
    assert "prey" not in out.keys() and out["agents", "reward"].shape == (8, 3, 1)
    away = ((prey.state.pos - before) * (before - nearest)).sum(-1)
    inside = before.abs().max(-1).values < 0.6  # away from the walls the prey runs straight off
    assert inside.any() and (away[inside] > 0).all()
    rollout = env.rollout(T, break_when_any_done=False)
    assert rollout["next", "truncated"][:, -1].all() and not rollout["next", "truncated"][:, :-1].any()
    assert torch.allclose(rollout["next", "reward"], rollout["next", "agents", "reward"].mean(-2))


def test_rollout_returns_with_discrete_actions():
    from lightning_marl.envs import rollout_returns

    env = make_env("vmas", "balance", num_envs=2, max_steps=T, continuous_actions=False)
    stay = rollout_returns(env, lambda obs, mask: torch.zeros(obs.shape[:2], dtype=torch.int64), episodes=4)
    assert len(stay["returns"]) == 4 and stay["win_rate"] is None
    assert stay["returns"][0] != 0


@pytest.mark.parametrize("continuous", [True, False])
def test_simple_world_comm_leader_and_followers_form_one_group(continuous):
    env = make_env("vmas", "simple_world_comm", num_envs=2, max_steps=T, continuous_actions=continuous, seed=0)
    check_env_specs(env)
    spec = env_spec(env)
    assert spec["agent_names"] == ["lead_adversary_0", "adversary_1", "adversary_2", "adversary_3"]
    assert spec["obs_dim"] == 60 and spec["state_dim"] == 240
    td = env.reset()
    if continuous:  # the leader also speaks: 2 move + 4 say dims; the followers use the first 2
        assert spec["action_dim"] == 6 and spec["action_low"] == [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0]
        td["agents", "action"] = torch.zeros(2, 4, 6)
        td["agents", "action"][:, [0, 2], 0] = 1.0  # leader and follower 2 push along +x
    else:  # the leader picks (move x, move y, word) among 3 * 3 * 4 = 36; followers among 9
        assert spec["n_actions"] == 36
        assert td["agents", "action_mask"].sum(-1).tolist() == [[36, 9, 9, 9]] * 2
        td["agents", "action"] = torch.tensor([[2 * 3 * 4, 0, 6, 0]] * 2)  # leader x+ (word 0); follower 2 x+
    out = env.step(td)["next"]
    world = env.base_env._env.world
    velocity_x = torch.stack([world.agents[i].state.vel[:, 0] for i in range(4)], dim=1)
    assert (velocity_x[:, [0, 2]] > 0).all() and (velocity_x[:, [1, 3]] == 0).all()
    assert out["agents", "reward"].shape == (2, 4, 1) and "agent" not in out.keys()
