"""IQL: the expectile value loss, the clipped advantage weights, TD targets, and learning on
the climbing (discrete) and continuous agree games, with independent and centralised critics."""

import math

import pytest
import torch

from lightning_marl.algorithms.iql import IQL
from lightning_marl.collect.matrix import continuous_agree_transitions, matrix_game_transitions
from lightning_marl.data import schema
from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.data.schema import validate_transitions
from lightning_marl.envs import payoff
from lightning_marl.nets.critics import expectile_loss


def _constant(linears, value):
    """Make an MLP output ``value`` everywhere (its last layer: zero weights, bias = value)."""
    with torch.no_grad():
        linears[-1].weight.zero_()
        linears[-1].bias.fill_(value)


def _set_iql_constants(module, q1, q2, v):
    last = module.q_target.net.layers[-1]  # stacked twin critics: member k is slice k
    with torch.no_grad():
        for k, value in enumerate((q1, q2)):
            last.weight[k].zero_()
            last.bias[k].fill_(value)
    _constant(module.v.linears, v)


@pytest.fixture(scope="module")
def tiny():
    td, spec = matrix_game_transitions("climbing", [(0, 0), (1, 2)], [0.5, 0.5], n=6, seed=1)
    return td, spec


def test_expectile_loss_value_and_asymmetry():
    diff = torch.tensor([2.0, -2.0, 1.0])
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 4 + 0.7 * 1) / 3)
    # Underestimating Q̄ (diff > 0) costs tau_e, overestimating 1 - tau_e: V sits above the mean.
    assert expectile_loss(torch.tensor([1.5]), 0.7).item() == pytest.approx(0.7 * 2.25)
    assert expectile_loss(torch.tensor([-1.5]), 0.7).item() == pytest.approx(0.3 * 2.25)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (diff**2).mean().item())


@pytest.mark.parametrize("v, expected", [(1.0, 0.7 * 4.0), (5.0, 0.3 * 4.0)])
def test_value_loss_uses_the_min_of_the_twin_targets(tiny, v, expected):
    td, spec = tiny
    torch.manual_seed(0)
    module = IQL.from_spec(spec, hidden=[8, 8])
    _set_iql_constants(module, q1=3.0, q2=4.0, v=v)  # Q̄ = min(3, 4) = 3; diff = 3 - v = ±2
    intermediates = {}
    losses = module.losses(td, intermediates)
    assert torch.allclose(intermediates["q_bar"], torch.full((6, 2), 3.0))
    assert losses["v"].item() == pytest.approx(expected, rel=1e-6)


def test_advantage_weights_are_clipped_at_100(tiny):
    td, spec = tiny
    module = IQL.from_spec(spec, hidden=[8, 8])
    advantage = torch.tensor([-1.0, 0.0, 1.0, math.log(100) / 3 - 1e-3, 2.0, 1e4])
    expected = torch.tensor([math.exp(-3), 1.0, math.exp(3), 100 * math.exp(-3e-3), 100.0, 100.0])
    assert torch.allclose(module.advantage_weight(advantage), expected, rtol=1e-5)

    _set_iql_constants(module, q1=7.0, q2=5.0, v=3.0)  # A = 5 - 3 = 2: exp(6) = 403 -> 100
    intermediates = {}
    losses = module.losses(td, intermediates)
    assert torch.allclose(intermediates["weight"], torch.full((6, 2), 100.0))
    log_pi = module.actor.log_prob(td[schema.OBS], td[schema.ACTION], td[schema.ACTION_MASK])
    assert losses["policy"].item() == pytest.approx(-(100.0 * log_pi).mean().item(), rel=1e-6)


@pytest.mark.parametrize("centralised", [False, True])
def test_td_target_bootstraps_through_truncation_and_losses_are_disjoint(continuous_transitions, centralised):
    td, spec = continuous_transitions
    batch = td[:8].clone()
    batch[schema.TERMINATED][:4] = True
    batch[schema.TERMINATED][4:] = False
    batch[schema.TRUNCATED][4:] = True  # time limit: still bootstraps
    batch[schema.DONE] = batch[schema.TERMINATED] | batch[schema.TRUNCATED]
    torch.manual_seed(0)
    module = IQL.from_spec(spec, hidden=[8, 8], centralised=centralised, gamma=0.5)
    intermediates = {}
    losses = module.losses(batch, intermediates)
    with torch.no_grad():
        next_v = module.value(module.critic_inputs(batch, next=True))
    reward = batch[schema.REWARD]
    expected = torch.cat([reward[:4].expand_as(next_v[:4]), reward[4:] + 0.5 * next_v[4:]])
    assert torch.allclose(intermediates["target"], expected)
    assert intermediates["q_bar"].shape == ((8, 1) if centralised else (8, 2))
    groups = module.parameter_groups()
    for name, loss in losses.items():
        for other, nets in groups.items():
            grads = torch.autograd.grad(loss, [p for n in nets for p in n.parameters()], retain_graph=True,
                                        allow_unused=True)
            assert all((g is not None) == (other == name) for g in grads), (name, other)


def test_centralised_trains_on_both_action_kinds(continuous_transitions, tiny):
    for td, spec in (continuous_transitions, tiny):
        torch.manual_seed(0)
        module = IQL.from_spec(spec, hidden=[8, 8], centralised=True)
        for _ in range(2):
            stats = module.train_step(td[:6])
        assert all(torch.isfinite(v) for v in stats.values())


def _greedy_climbing(dataset, seed, centralised):
    torch.manual_seed(seed)
    module = IQL.from_spec(dataset.spec, hidden=[64, 64], lr=1e-3, tau=0.02, centralised=centralised)
    datamodule = OfflineDataModule(dataset, batch_size=128, seed=seed)
    for iteration in range(200):
        module.train_step(datamodule.sample(iteration))
    return tuple(module.act(torch.zeros(1, 2, 1), torch.ones(1, 2, 3, dtype=torch.bool))[0].tolist())


@pytest.mark.parametrize("centralised", [False, True])
def test_iql_picks_the_best_joint_action_in_the_climbing_data(climbing_dataset, one_thread, centralised):
    # (0, 0) pays 11 but is the minority (25 %); cloning (beta = 0) picks (1, 1) (7) in every seed,
    # IQL (0, 0) with probability > 0.99 for each agent in every seed.
    picks = [_greedy_climbing(climbing_dataset, seed, centralised) for seed in range(5)]
    assert sum(p == (0, 0) for p in picks) >= 4, picks


@pytest.mark.parametrize("centralised", [False, True])
def test_iql_beats_behaviour_cloning_on_continuous_agree(one_thread, centralised):
    # 10 % of the rows near (0.9, 0.9) (reward ~0.99), the rest uniform. Cloning (beta = 0) lands
    # near (0.27, 0.23), reward 0.40-0.47; IQL reaches 0.68-0.77 (independent), 0.82-0.94 (centralised).
    td, spec = continuous_agree_transitions(2000, good_fraction=0.1, mode=0.9, noise=0.1, seed=0)
    validate_transitions(td, spec)
    rewards = []
    for seed in range(5):
        torch.manual_seed(seed)
        module = IQL.from_spec(spec, hidden=[32, 32], lr=1e-3, tau=0.02, centralised=centralised)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(200):
            module.train_step(td[torch.randint(len(td), (64,), generator=generator)])
        rewards.append(payoff("agree", module.act(torch.zeros(1, 2, 1)).detach()).item())
    assert sum(r > 0.6 for r in rewards) >= 4, rewards
