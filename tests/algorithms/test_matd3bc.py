"""MA-TD3+BC: the lambda normaliser, the delayed actor and targets, normalised observations, and
learning on the continuous agree game."""

import pytest
import torch

from lightning_marl.algorithms.matd3bc import MATD3BC
from lightning_marl.collect.matrix import continuous_agree_transitions
from lightning_marl.data import schema
from lightning_marl.envs import payoff


@pytest.fixture
def module_and_batch(continuous_transitions):
    td, spec = continuous_transitions
    torch.manual_seed(0)
    module = MATD3BC.from_spec(spec, hidden=[8, 8])
    module.fit_observation_normaliser(td)
    return module, td[:16]


def test_lambda_is_alpha_over_mean_abs_q_per_agent(module_and_batch):
    module, batch = module_and_batch
    with torch.no_grad():  # Q_1 = -4 everywhere: lambda = 2.5 / 4, and -lambda·Q = +2.5
        module.q.net.layers[-1].weight[0].zero_()
        module.q.net.layers[-1].bias[0].fill_(-4.0)
    intermediates = {}
    losses = module.losses(batch, intermediates)
    assert torch.allclose(intermediates["lam"], torch.full((2,), 2.5 / 4.0))
    observation = (batch[schema.OBS] - module.obs_mean) / module.obs_std
    pi = torch.tanh(module.actor.net(observation))
    bc = ((pi - batch[schema.ACTION]) ** 2).mean(-1).mean()
    assert losses["policy"].item() == pytest.approx(2.5 + bc.item(), rel=1e-6)


def test_lambda_with_a_learned_critic_and_no_critic_gradient_from_the_actor(module_and_batch):
    module, batch = module_and_batch
    intermediates = {}
    losses = module.losses(batch, intermediates)
    observation = module.normalise_observation(batch[schema.OBS])
    with torch.no_grad():
        pi = module.actor(observation)
        q = module.q(observation, pi)[0]  # [B, N], the first critic
    lam = 2.5 / q.abs().mean(0)
    assert torch.allclose(intermediates["lam"], lam)
    expected = (-lam * q + ((pi - batch[schema.ACTION]) ** 2).mean(-1)).mean()
    assert losses["policy"].item() == pytest.approx(expected.item(), rel=1e-5)
    critic = list(module.q.parameters())
    assert all(g is None for g in torch.autograd.grad(losses["policy"], critic, retain_graph=True, allow_unused=True))
    actor = list(module.actor.parameters())
    assert all(g is None for g in torch.autograd.grad(losses["q"], actor, retain_graph=True, allow_unused=True))


@pytest.mark.parametrize("distributed", [False, True])
def test_actor_and_targets_step_every_second_iteration(module_and_batch, monkeypatch, distributed):
    """Alone, the actor's loss is computed only when the actor steps (as TD3's reference code
    does); under DDP (``every_loss_each_step``) at every iteration, so that every parameter has a
    gradient at every step. Either way the same parameters move at the same iterations."""
    module, batch = module_and_batch
    monkeypatch.setattr(module, "every_loss_each_step", lambda: distributed)
    nets = {"actor": module.actor, "q": module.q, "actor_target": module.actor_target, "q_target": module.q_target}
    moved = {name: [] for name in nets}
    policy_losses = []
    for iteration in range(4):
        before = {name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()}
        stats = module.train_step(batch)
        computed = distributed or iteration % 2 == 1
        assert all((p.grad is not None) == computed for p in module.actor.parameters()), iteration
        if iteration > 0:  # a loss left out reports its last value
            assert torch.isfinite(stats["loss/policy"]) and stats["grad_norm/policy"] > 0
        policy_losses.append(stats.get("loss/policy"))
        for name, net in nets.items():
            moved[name].append(any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())))
    assert moved["q"] == [True] * 4
    assert moved["actor"] == moved["actor_target"] == moved["q_target"] == [False, True, False, True]
    if not distributed:
        assert policy_losses[0] is None and torch.equal(policy_losses[2], policy_losses[1])


def test_observations_are_normalised_for_acting(continuous_transitions):
    td, spec = continuous_transitions
    torch.manual_seed(0)
    module = MATD3BC.from_spec(spec, hidden=[8, 8])
    module.fit_observation_normaliser(td)
    observation = td[schema.OBS][:4]
    flat = td[schema.OBS].reshape(-1, spec.obs_dim)
    mean, std = flat.mean(0), flat.std(0, unbiased=False)
    assert torch.allclose(module.obs_mean, mean, atol=1e-5) and torch.allclose(module.obs_std, std, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(module.act(observation), module.actor((observation - mean) / std), atol=1e-6)
    assert "obs_mean" in module.state_dict() and module.policy_prefixes() == ("actor.", "obs_")


def test_matd3bc_finds_the_good_mode_of_continuous_agree(one_thread):
    # 10 % of the rows near (0.9, 0.9) (reward ~0.99), the rest uniform: plain cloning (alpha = 0)
    # gives about the mean action, (0.1, 0.1), reward 0.14-0.23; TD3+BC reaches 0.99-1.0.
    td, spec = continuous_agree_transitions(2000, good_fraction=0.1, mode=0.9, noise=0.1, seed=0)
    rewards = []
    for seed in range(5):
        torch.manual_seed(seed)
        module = MATD3BC.from_spec(spec, hidden=[64, 64], lr=1e-3)
        module.fit_observation_normaliser(td)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(200):
            module.train_step(td[torch.randint(len(td), (128,), generator=generator)])
        rewards.append(payoff("agree", module.act(torch.zeros(1, 2, 1)).detach()).item())
    assert sum(r > 0.9 for r in rewards) >= 4, rewards
