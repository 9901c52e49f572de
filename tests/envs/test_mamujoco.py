import pytest
import torch
from torchrl.envs.utils import check_env_specs

from lightning_marl.envs import env_spec, make_env, rollout_returns
from lightning_marl.errors import ConfigError

pytest.importorskip("gymnasium_robotics")

E, T = 2, 8
TASKS = [  # task, agents, padded obs size, real obs sizes, action size, state size
    ("HalfCheetah-2x3", 2, 12, [12, 12], 3, 17),
    ("HalfCheetah-6x1", 6, 9, [9, 9, 8, 9, 9, 8], 1, 17),
    ("Hopper-3x1", 3, 9, [8, 9, 8], 1, 11),
    ("Ant-2x4", 2, 63, [63, 63], 4, 105),
    ("Walker2d-2x3", 2, 12, [12, 12], 3, 17),
]


def random_actions(shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("task,n,o,sizes,a,s", TASKS)
def test_contract_keys_dtypes_shapes(task, n, o, sizes, a, s):
    env = make_env("mamujoco", task, num_envs=E, max_steps=T, seed=0)
    spec = env_spec(env)
    assert (spec["n_agents"], spec["obs_dim"], spec["action_dim"], spec["state_dim"]) == (n, o, a, s)
    assert spec["action_low"] == [-1.0] * a and spec["action_high"] == [1.0] * a and not spec["discrete"]
    assert spec["team_reward_rule"] == "the environment's shared team reward" and spec["max_steps"] == T
    if len(set(sizes)) > 1:
        assert [sum(row) for row in spec["obs_mask"]] == sizes
    else:
        assert "obs_mask" not in spec
    actions = random_actions((T + 2, E, n, a))
    td, steps = env.reset(), []
    for action in actions:
        td["agents", "action"] = action
        td, next_td = env.step_and_maybe_reset(td)
        steps.append(td)
        td = next_td
    rollout = torch.stack(steps, dim=1)
    expected = {
        ("agents", "observation"): (torch.float32, (E, T + 2, n, o)),
        ("agents", "action"): (torch.float32, (E, T + 2, n, a)),
        "state": (torch.float32, (E, T + 2, s)),
        ("next", "agents", "observation"): (torch.float32, (E, T + 2, n, o)),
        ("next", "state"): (torch.float32, (E, T + 2, s)),
        ("next", "agents", "reward"): (torch.float32, (E, T + 2, n, 1)),
        ("next", "reward"): (torch.float32, (E, T + 2, 1)),
    }
    for flag in ("done", "terminated", "truncated"):
        expected[flag] = expected[("next", flag)] = (torch.bool, (E, T + 2, 1))
    for key, (dtype, shape) in expected.items():
        assert rollout[key].dtype == dtype, key
        assert rollout[key].shape == shape, key
    assert ("agents", "action_mask") not in rollout.keys(include_nested=True)
    rewards = rollout["next", "agents", "reward"]
    assert torch.equal(rewards, rewards[..., :1, :].expand_as(rewards))  # one shared robot reward
    assert torch.equal(rollout["next", "reward"], rewards[..., 0, :]) and rewards.abs().sum() > 0
    padding = ~torch.tensor(spec.get("obs_mask", [[True] * o] * n))
    assert (rollout["agents", "observation"][..., padding] == 0).all()
    done = rollout["next", "done"].squeeze(-1)
    assert torch.equal(done, (rollout["next", "terminated"] | rollout["next", "truncated"]).squeeze(-1))


def test_time_limit_and_reset():
    env = make_env("mamujoco", "HalfCheetah-2x3", num_envs=E, max_steps=T)
    check_env_specs(env)
    rollout = env.rollout(2 * T, break_when_any_done=False)
    truncated = rollout["next", "truncated"].squeeze(-1)
    assert truncated[:, [T - 1, 2 * T - 1]].all() and truncated.sum() == 2 * E
    assert not rollout["next", "terminated"].any()  # a cheetah never falls
    first, restarted = rollout["agents", "observation"][:, 0], rollout["agents", "observation"][:, T]
    assert first.abs().max() < 0.5 and restarted.abs().max() < 0.5  # MuJoCo's small reset noise
    assert not torch.equal(rollout["agents", "observation"][:, T], rollout["next", "agents", "observation"][:, T - 1])


def test_a_falling_hopper_terminates():
    env = make_env("mamujoco", "Hopper-3x1", num_envs=E, max_steps=200)
    result = rollout_returns(env, lambda obs, mask: torch.ones(*obs.shape[:2], 1), episodes=E)
    assert len(result["returns"]) == E and result["mean"] < 200  # full torque: the hopper falls early
    rollout = env.rollout(200, lambda td: td.set(("agents", "action"), torch.ones(E, 3, 1)), break_when_any_done=True)
    assert rollout["next", "terminated"][:, -1].any() and rollout.shape[1] < 200


def test_bad_tasks_are_refused():
    with pytest.raises(ConfigError, match="Scenario-config"):
        make_env("mamujoco", "HalfCheetah", num_envs=1)
    with pytest.raises(ConfigError, match="HalfCheetah-2x3"):
        make_env("mamujoco", "HalfCheetah-9x9", num_envs=1)
