"""OMAR: the sampled search, the CQL penalty on a critic with a known Q, the actor loss, and
learning on the continuous agree game."""

import math

import pytest
import torch

from lightning_marl.algorithms.omar import OMAR
from lightning_marl.collect.matrix import continuous_agree_transitions
from lightning_marl.data import schema
from lightning_marl.envs import payoff


def _linear_q(q, k, obs_dim, slope, intercept):
    """Make critic k of an AgentQ compute Q(o, a) = slope·a_0 + intercept (for a in [-1, 1])."""
    first, second, last = q.net.layers  # stacked: weight [members, in, out], bias [members, 1, out]
    with torch.no_grad():
        for layer in (first, second, last):
            layer.weight[k].zero_()
            layer.bias[k].zero_()
        first.weight[k, obs_dim, 0] = 1.0  # h = relu(a_0 + 1) = a_0 + 1
        first.bias[k, 0, 0] = 1.0
        second.weight[k, 0, 0] = 1.0
        last.weight[k, 0, 0] = slope
        last.bias[k, 0, 0] = intercept - slope


@pytest.fixture
def agree():
    td, spec = continuous_agree_transitions(16, good_fraction=0.5, seed=3)
    torch.manual_seed(0)
    return OMAR.from_spec(spec, hidden=[8, 8]), td


def test_search_action_is_at_least_as_good_as_the_policy_action(continuous_transitions):
    td, spec = continuous_transitions
    torch.manual_seed(0)
    module = OMAR.from_spec(spec, hidden=[16, 16])
    observation = td[schema.OBS]
    pi = module.actor(observation).detach()
    action, value = module.search_action(observation, pi)
    with torch.no_grad():
        q_search, q_pi = module.q(observation, action)[0], module.q(observation, pi)[0]
    assert action.shape == pi.shape and action.abs().max() <= 1
    assert torch.allclose(q_search, value) and (q_search >= q_pi).all()
    assert (q_search > q_pi).any()  # a random critic: the search improves on pi somewhere


@pytest.mark.parametrize("slope, best", [(3.0, 1.0), (-2.0, -1.0)])
def test_search_finds_the_maximum_of_a_known_critic(agree, slope, best):
    module, td = agree
    _linear_q(module.q, 0, 1, slope, 0.5)
    observation = td[schema.OBS]
    pi = torch.full((16, 2, 1), 0.2)
    action, value = module.search_action(observation, pi)
    assert torch.equal(action, torch.full_like(pi, best))  # clamped samples hit the bound
    assert torch.allclose(value, torch.full((16, 2), abs(slope) + 0.5))
    optimal = torch.full_like(pi, best)  # nothing beats an optimal policy action: it is kept
    assert torch.equal(module.search_action(observation, optimal)[0], optimal)


def test_cql_penalty_on_a_known_critic(agree):
    module, td = agree
    module.config.cql_alpha = 0.5
    _linear_q(module.q, 0, 1, 2.0, 1.0)  # Q_1 = 2a + 1
    _linear_q(module.q, 1, 1, -1.0, 0.5)  # Q_2 = -a + 0.5
    observation = td[schema.OBS][:2]
    data = torch.tensor([[0.5, -0.5], [1.0, 0.0]]).unsqueeze(-1)  # a^D [B=2, N=2, 1]
    samples = torch.tensor([-1.0, 0.0, 0.6])  # the same three sampled actions for every row and agent
    log_p = torch.tensor([-math.log(2), 0.3, -0.2])
    actions = samples.view(3, 1, 1, 1).expand(3, 2, 2, 1)
    q_data = module.q(observation, data)
    expected = 0.0
    for slope, intercept in ((2.0, 1.0), (-1.0, 0.5)):
        lse = math.log(sum(math.exp(slope * a + intercept - lp) for a, lp in zip(samples.tolist(), log_p.tolist())))
        expected += sum(lse - (slope * a + intercept) for a in data.flatten().tolist()) / 4
    value = module.cql_penalty(observation, q_data, actions, log_p.view(3, 1, 1).expand(3, 2, 2))
    assert value.item() == pytest.approx(0.5 * expected, rel=1e-6)


def test_cql_samples_and_their_log_densities(agree):
    module, td = agree
    m, sigma = module.config.cql_samples, module.config.cql_policy_noise
    observation = td[schema.OBS]
    actions, log_p = module.cql_actions(observation, td[schema.NEXT_OBS])
    assert actions.shape == (3 * m, 16, 2, 1) and log_p.shape == (3 * m, 16, 2)
    assert actions.abs().max() <= 1 and not actions.requires_grad
    assert torch.allclose(log_p[:m], torch.full((m, 16, 2), -math.log(2)))
    noise = actions[m:2 * m] - module.actor(observation).detach()
    inside = actions[m:2 * m].abs() < 1  # clamped samples keep the density of their unclamped noise
    density = torch.distributions.Normal(0.0, sigma).log_prob(noise).sum(-1)
    assert torch.allclose(log_p[m:2 * m][inside.squeeze(-1)], density[inside.squeeze(-1)], atol=1e-5)


@pytest.mark.parametrize("w", [1.0, 0.5])
def test_actor_loss_pulls_toward_the_search_action_without_touching_the_critic(agree, w):
    module, td = agree
    module.config.w = w
    intermediates = {}
    losses = module.losses(td, intermediates)
    pi, target = intermediates["pi"], intermediates["search_action"]
    with torch.no_grad():
        q_pi = module.q(td[schema.OBS], pi)[0]
    expected = (w * ((pi - target) ** 2).sum(-1) - (1 - w) * q_pi).mean()
    assert losses["policy"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["q"].item() == pytest.approx((intermediates["td"] + intermediates["cql"]).item())
    critic = list(module.q.parameters())
    assert all(g is None for g in torch.autograd.grad(losses["policy"], critic, retain_graph=True, allow_unused=True))
    actor = list(module.actor.parameters())
    assert all(g is None for g in torch.autograd.grad(losses["q"], actor, retain_graph=True, allow_unused=True))


def test_omar_finds_the_good_mode_of_continuous_agree(one_thread):
    # 10 % of the rows near (0.9, 0.9) (reward ~0.99), the rest uniform. With the search switched
    # off (search_iters = 0: â = pi, the actor never moves) the reward is 0.11-0.42; OMAR reaches
    # > 0.9 in about 87 % of seeds (39 of seeds 0-44), so the test asks for the median seed, not 4 of 5.
    # cql_alpha 0.1: the penalty's weight is relative to the reward scale (here [-1, 1]).
    td, spec = continuous_agree_transitions(2000, good_fraction=0.1, mode=0.9, noise=0.1, seed=0)
    rewards = []
    for seed in range(5):
        torch.manual_seed(seed)
        module = OMAR.from_spec(spec, hidden=[32, 32], lr=1e-3, cql_alpha=0.1)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(150):
            module.train_step(td[torch.randint(len(td), (64,), generator=generator)])
        rewards.append(payoff("agree", module.act(torch.zeros(1, 2, 1)).detach()).item())
    assert sorted(rewards)[2] > 0.9 and sum(rewards) / 5 > 0.7, rewards
