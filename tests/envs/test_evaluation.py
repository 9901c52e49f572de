import pytest
import torch
from torchrl.data import Categorical

from lightning_marl.collect.behaviour import uniform_random
from lightning_marl.envs import MatrixGameEnv, env_spec, make_env, rollout_returns

E = 4


def constant(a0, a1):
    return lambda obs, mask: torch.tensor([a0, a1]).expand(obs.shape[0], 2)


@pytest.mark.parametrize("actions,expected", [((0, 0), 11.0), ((0, 1), -30.0), ((1, 2), 6.0)])
def test_climbing_fixed_policy_returns_the_payoff(actions, expected):
    result = rollout_returns(make_env("matrix", "climbing", num_envs=E), constant(*actions), episodes=6)
    assert result["returns"] == [expected] * 6
    assert result["mean"] == expected and result["std"] == 0.0
    assert result["episodes"] == 6 and result["win_rate"] is None


def test_returns_are_ordered_episode_then_env():
    # env j plays (j % 3, j % 3): the diagonal 11, 7, 5, 11
    act = lambda obs, mask: (torch.arange(obs.shape[0]) % 3).unsqueeze(-1).expand(-1, 2)
    result = rollout_returns(make_env("matrix", "climbing", num_envs=E), act, episodes=6)
    assert result["returns"] == [11.0, 7.0, 5.0, 11.0, 11.0, 7.0]
    assert result["mean"] == pytest.approx(52 / 6)


def test_act_receives_observation_and_mask():
    seen = []

    def act(obs, mask):
        seen.append((obs.shape, obs.dtype, None if mask is None else (mask.shape, mask.dtype)))
        return torch.zeros(obs.shape[:2], dtype=torch.int64)

    rollout_returns(make_env("matrix", "climbing", num_envs=E), act, episodes=1)
    assert seen == [((E, 2, 1), torch.float32, ((E, 2, 3), torch.bool))]

    result = rollout_returns(
        make_env("matrix", "agree", num_envs=2, n_agents=3, continuous=True),
        lambda obs, mask: seen.append(mask) or torch.ones(obs.shape[0], 3, 1),
        episodes=3,
    )
    assert seen[-1] is None and result["returns"] == [1.0, 1.0, 1.0]


def test_vmas_return_is_the_sum_of_team_rewards():
    env = make_env("vmas", "navigation", num_envs=2, max_steps=5, n_agents=2, seed=0)
    act = lambda obs, mask: torch.full((*obs.shape[:2], 2), 0.5)
    result = rollout_returns(env, act, episodes=2, seed=3)
    env.set_seed(3)
    rollout = env.rollout(5, policy=lambda td: td.set(("agents", "action"), act(td["agents", "observation"], None)))
    assert result["returns"] == pytest.approx(rollout["next", "reward"].sum(dim=(1, 2)).tolist())
    assert result["mean"] == pytest.approx(sum(result["returns"]) / 2)


def test_deterministic_given_seed():
    env = make_env("vmas", "navigation", num_envs=2, max_steps=5, n_agents=2)
    spec = env_spec(env)
    runs = [
        rollout_returns(env, uniform_random(spec, torch.Generator().manual_seed(0)), episodes=3, seed=s)
        for s in (1, 1, 2)
    ]
    assert runs[0]["returns"] == runs[1]["returns"]
    assert runs[0]["returns"] != runs[2]["returns"]
    assert len(runs[0]["returns"]) == 3


class WinningClimbing(MatrixGameEnv):
    """Climbing with a ("next", "won") flag: won when the team earns the top payoff."""

    def _make_specs(self):
        super()._make_specs()
        self.observation_spec["won"] = Categorical(2, (*self.batch_size, 1), dtype=torch.bool)

    def _reset(self, tensordict=None, **kwargs):
        return super()._reset(tensordict).set("won", torch.zeros(*self.batch_size, 1, dtype=torch.bool))

    def _step(self, tensordict):
        out = super()._step(tensordict)
        return out.set("won", out["reward"] == 11)


def test_win_rate_when_the_env_reports_wins():
    env = WinningClimbing("climbing", num_envs=E)
    act = lambda obs, mask: (torch.arange(obs.shape[0]) % 2).unsqueeze(-1).expand(-1, 2)  # (0,0) wins, (1,1) not
    result = rollout_returns(env, act, episodes=4)
    assert result["win_rate"] == 0.5 and result["returns"] == [11.0, 7.0, 11.0, 7.0]


def test_refuses_zero_episodes():
    with pytest.raises(ValueError):
        rollout_returns(make_env("matrix", "climbing", num_envs=2), constant(0, 0), episodes=0)
