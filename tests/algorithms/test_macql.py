"""MA-CQL: the penalty over uniform and policy actions with their log-densities, the soft target,
disjoint gradients; the continuous agree game."""

import math

import pytest
import torch
from torch import nn

from lightning_marl.algorithms.macql import MACQL
from lightning_marl.collect.matrix import continuous_agree_transitions
from lightning_marl.data import schema
from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.data.dataset import Dataset
from lightning_marl.nets.sampling import tanh_gaussian_rsample


class QuadraticTwin(nn.Module):
    """Known twin critics: Q1 = -|a - 0.3|^2, Q2 = -2 |a + 0.1|^2 (per agent, observation ignored)."""

    def forward(self, observation, action, frozen=False):
        return torch.stack([-((action - 0.3) ** 2).sum(-1), -2 * ((action + 0.1) ** 2).sum(-1)], -1)


@pytest.fixture
def batch_and_spec(continuous_transitions):
    td, spec = continuous_transitions
    batch = td[:8].clone()
    batch[schema.TERMINATED][:4] = True  # rows 0-3 terminate, rows 4-7 bootstrap
    batch[schema.DONE] = batch[schema.TERMINATED] | batch[schema.TRUNCATED]
    return batch, spec


def test_penalty_uses_uniform_and_policy_actions_with_their_log_densities(batch_and_spec):
    batch, spec = batch_and_spec
    torch.manual_seed(0)
    module = MACQL.from_spec(spec, hidden=[8, 8], alpha=5.0)
    module.q = QuadraticTwin()
    parts = {}
    losses = module.losses(batch, parts)
    samples, log_density = parts["samples"], parts["log_density"]
    a = spec.action_dim
    assert samples.shape == (8, 30, 2, a) and log_density.shape == (8, 30, 2)
    assert not samples.requires_grad and not log_density.requires_grad  # no gradient to the actor
    uniform, current, following = samples[:, :10], samples[:, 10:20], samples[:, 20:]
    assert uniform.abs().max() <= 1
    torch.testing.assert_close(log_density[:, :10], torch.full((8, 10, 2), -a * math.log(2)))
    observation, next_observation = batch[schema.OBS].unsqueeze(1), batch[schema.NEXT_OBS].unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(log_density[:, 10:20], module.actor.log_prob(observation, current), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(log_density[:, 20:], module.actor.log_prob(next_observation, following),
                                   atol=1e-4, rtol=1e-4)
    q_samples = QuadraticTwin()(None, samples)  # [B, 30, N, 2], all evaluated at o_i
    q_data = QuadraticTwin()(None, batch[schema.ACTION])
    gap = torch.logsumexp(q_samples - log_density.unsqueeze(-1), dim=1) - q_data
    torch.testing.assert_close(parts["gap"], gap)
    expected = parts["td_loss"] + 5.0 * gap.mean((0, 1)).sum()  # each twin its own penalty
    assert losses["q"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_target_bootstraps_except_at_termination(batch_and_spec):
    batch, spec = batch_and_spec
    module = MACQL.from_spec(spec, hidden=[8, 8])
    module.q_target = QuadraticTwin()
    module.rng.manual_seed(1)  # the method's randomness comes from module.rng
    parts = {}
    module.losses(batch, parts)
    with torch.no_grad():  # the target's next actions are the first draw of the step
        next_action, next_log_pi = tanh_gaussian_rsample(module.actor, batch[schema.NEXT_OBS],
                                                         generator=torch.Generator().manual_seed(1))
        soft = QuadraticTwin()(None, next_action).min(-1).values - 1.0 * next_log_pi  # temperature starts at 1
    expected = batch[schema.REWARD] + 0.99 * (~batch[schema.TERMINATED]).float() * soft
    torch.testing.assert_close(parts["target"], expected)
    torch.testing.assert_close(parts["target"][:4], batch[schema.REWARD][:4].expand(4, 2))
    module.config.backup_entropy = False
    module.rng.manual_seed(1)
    module.losses(batch, parts)
    soft = QuadraticTwin()(None, next_action).min(-1).values
    torch.testing.assert_close(parts["target"], batch[schema.REWARD] + 0.99 * (~batch[schema.TERMINATED]).float() * soft)


def test_losses_touch_disjoint_parameter_groups(batch_and_spec):
    batch, spec = batch_and_spec
    module = MACQL.from_spec(spec, hidden=[8, 8])
    losses = module.losses(batch)
    groups = module.parameter_groups()
    assert sorted(groups) == ["policy", "q", "temperature"] and module.target_entropy == -spec.action_dim
    for loss_name, loss in losses.items():
        for group, nets in groups.items():
            params = [p for net in nets for p in net.parameters()]
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            reached = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert reached == (group == loss_name), (loss_name, group)


def test_fixed_temperature_has_no_group(batch_and_spec):
    batch, spec = batch_and_spec
    module = MACQL.from_spec(spec, hidden=[8, 8], learn_temperature=False, temperature=0.2)
    assert sorted(module.parameter_groups()) == ["policy", "q"]
    assert module.temperature().item() == pytest.approx(0.2)
    stats = module.train_step(batch)
    assert all(torch.isfinite(v) for v in stats.values())



def test_macql_stays_near_the_data_mode_of_the_agree_game(one_thread):
    # The data: both agents near -0.5 (reward 0.75); the optimum -1 (or +1) is outside the data.
    td, spec = continuous_agree_transitions(2000, n_agents=2, good_fraction=1.0, mode=-0.5, noise=0.1, seed=0)
    dataset = Dataset(None, td, {"spec": spec.to_dict()})
    actions = []
    for seed in range(5):
        torch.manual_seed(seed)
        module = MACQL.from_spec(spec, hidden=[32, 32], lr=1e-3)
        datamodule = OfflineDataModule(dataset, batch_size=64, seed=seed)
        for iteration in range(200):
            module.train_step(datamodule.sample(iteration))
        actions.append(module.act(torch.zeros(1, 2, 1))[0, :, 0])
    print("macql joint actions", [[round(x, 3) for x in a.tolist()] for a in actions])
    assert sum(bool(((a + 0.5).abs() < 0.25).all()) for a in actions) >= 4, actions
