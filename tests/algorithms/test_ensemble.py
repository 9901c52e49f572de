"""Stacked twin critics (nets/ensemble.py): equal to separate MLPs, member slicing, frozen weights."""

import pytest
import torch
from torch import nn

from lightning_marl.nets.critics import AgentQ, CentralQ
from lightning_marl.nets.ensemble import EnsembleMLP
from lightning_marl.nets.linear import onednn_route_enabled


def _separate_mlps(ensemble: EnsembleMLP) -> list[nn.Sequential]:
    """The members as ordinary nn.Linear/ReLU stacks holding the same weights."""
    members = []
    for k in range(ensemble.members):
        layers = []
        for i, layer in enumerate(ensemble.layers):
            linear = nn.Linear(layer.weight.shape[1], layer.weight.shape[2])
            with torch.no_grad():
                linear.weight.copy_(layer.weight[k].t())
                linear.bias.copy_(layer.bias[k, 0])
            layers += [linear] + ([nn.ReLU()] if i < len(ensemble.layers) - 1 else [])
        members.append(nn.Sequential(*layers))
    return members


@pytest.mark.parametrize("loop", [False, True], ids=["batched", "member by member"])
def test_ensemble_equals_separate_networks_in_values_and_gradients(loop):
    torch.manual_seed(0)
    ensemble = EnsembleMLP(members=3, in_features=5, out_features=2, hidden=(16, 8))
    ensemble.loop_above_rows = 0 if loop else 10**9
    separate = _separate_mlps(ensemble)
    x = torch.randn(4, 6, 5)
    out = ensemble(x)
    assert out.shape == (3, 4, 6, 2)
    for k, net in enumerate(separate):
        assert torch.allclose(out[k], net(x), atol=1e-6)
    out.square().sum().backward()
    sum(net(x).square().sum() for net in separate).backward()
    for i, layer in enumerate(ensemble.layers):
        for k, net in enumerate(separate):
            linear = net[2 * i]
            assert torch.allclose(layer.weight.grad[k], linear.weight.grad.t(), atol=1e-5)
            assert torch.allclose(layer.bias.grad[k, 0], linear.bias.grad, atol=1e-5)


@pytest.mark.parametrize("loop", [False, True], ids=["batched", "member by member"])
def test_members_selects_the_first_critics_and_frozen_keeps_gradients_off_the_weights(loop):
    torch.manual_seed(0)
    q = AgentQ(obs_dim=3, n_agents=2, hidden=(8, 8), action_dim=2)
    q.net.loop_above_rows = 0 if loop else 10**9
    observation, action = torch.randn(5, 2, 3), torch.rand(5, 2, 2, requires_grad=True)
    both = q(observation, action)
    assert torch.equal(q(observation, action, members=1), both[:1])
    q(observation, action, members=1, frozen=True).sum().backward()
    assert all(p.grad is None for p in q.parameters()) and action.grad is not None
    q(observation, action).sum().backward()
    assert all(p.grad is not None for p in q.parameters())


@pytest.mark.parametrize("widths", [{"action_dim": 2}, {"n_actions": 3}])
def test_central_twin_critics_are_independent(widths):
    torch.manual_seed(0)
    q = CentralQ(state_dim=4, n_agents=2, hidden=(8, 8), **widths)
    state = torch.randn(6, 4)
    action = torch.rand(6, 2, 2) if "action_dim" in widths else torch.randint(3, (6, 2))
    values = q(state, action)
    assert values.shape == (2, 6, 1) and not torch.allclose(values[0], values[1])  # different initial weights


@pytest.mark.skipif(not onednn_route_enabled(), reason="the oneDNN route is off on this machine")
@pytest.mark.parametrize("members", [1, 2])
def test_onednn_route_with_and_without_gradients_equals_separate_networks(members):
    torch.manual_seed(0)
    ensemble = EnsembleMLP(members=2, in_features=21, out_features=1, hidden=(256, 256))
    separate = _separate_mlps(ensemble)[:members]
    x = torch.randn(128, 3, 21)
    with torch.no_grad():
        direct = ensemble(x, members=members)
        for k, net in enumerate(separate):
            torch.testing.assert_close(direct[k], net(x), rtol=1e-5, atol=1e-5)
    out = ensemble(x, members=members)
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "_OneDNNEnsembleBackward"
    torch.testing.assert_close(out, direct)
    out.square().sum().backward()
    sum(net(x).square().sum() for net in separate).backward()
    for i, layer in enumerate(ensemble.layers):
        for k, net in enumerate(separate):
            torch.testing.assert_close(layer.weight.grad[k], net[2 * i].weight.grad.t(), rtol=1e-4, atol=1e-5)
        if members < 2:
            assert (layer.weight.grad[1] == 0).all()


@pytest.mark.skipif(not onednn_route_enabled(), reason="the oneDNN route is off on this machine")
def test_frozen_members_on_data_record_no_graph_and_no_weight_gradient():
    ensemble = EnsembleMLP(members=2, in_features=21, out_features=1, hidden=(256, 256))
    out = ensemble(torch.randn(128, 3, 21), frozen=True)  # gradients on, but nothing to differentiate
    assert not out.requires_grad and out.grad_fn is None
