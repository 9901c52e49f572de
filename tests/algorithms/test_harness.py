"""One harness over every registered method and every action kind it supports."""

import copy

import pytest
import torch

from lightning_marl import registry
from lightning_marl.algorithms.base import CONTINUOUS, DISCRETE
from lightning_marl.collect.matrix import matrix_game_transitions
from lightning_marl.errors import ConfigError, PluginError
from lightning_marl.nets.optim import ClippedAdam

CASES = [
    (entry.name, kind)
    for entry in registry.entries("algorithm")
    for kind in (CONTINUOUS, DISCRETE)
    if kind in entry.obj.supports
]


@pytest.fixture(scope="module")
def batches(continuous_transitions):
    td, spec = continuous_transitions
    discrete_td, discrete_spec = matrix_game_transitions("climbing", [(0, 0), (1, 2)], [0.5, 0.5], n=32)
    return {CONTINUOUS: (td[:32], spec), DISCRETE: (discrete_td, discrete_spec)}


@pytest.mark.parametrize("name, kind", CASES)
def test_method_trains_and_round_trips(name, kind, batches, tmp_path):
    batch, spec = batches[kind]
    method = registry.get("algorithm", name)
    torch.manual_seed(0)
    module = method.from_spec(spec, hidden=[16, 16])
    before = copy.deepcopy(module.state_dict())
    targets_before = [[p.clone() for p in t.parameters()] for _, t in module._target_pairs]
    online_before = [[p.clone() for p in o.parameters()] for o, _ in module._target_pairs]
    for _ in range(3):
        stats = module.train_step(batch)
    assert module.iteration == 3
    assert all(torch.isfinite(v) for v in stats.values())
    for optimizer in module._optimizers():  # after the first step Adam runs fused, clipping inside it
        assert isinstance(optimizer, ClippedAdam) and optimizer._fast_lists() is not None
    for group in module.parameter_groups().values():
        changed = any(not torch.equal(p, before[n]) for net in group for n, p in _named(module, net))
        assert changed, "a parameter group did not move"
    # targets move by Polyak averaging: after one step from the online weights they lie strictly between.
    for (online, target), t_before, o_before in zip(module._target_pairs, targets_before, online_before):
        for p_t, p_t0, p_o0 in zip(target.parameters(), t_before, o_before):
            assert not p_t.requires_grad
            assert torch.equal(p_t0, p_o0)  # targets start as copies
        assert any(not torch.equal(p_t, p_o) for p_t, p_o in zip(target.parameters(), online.parameters()))
    module.config.tau = 1.0
    module.update_targets()
    for online, target in module._target_pairs:
        assert all(torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters()))

    clone = method.from_spec(spec, hidden=[16, 16])
    clone.load_state_dict(module.state_dict())
    observation = batch[("agents", "observation")]
    mask = batch.get(("agents", "action_mask"), None)
    action = module.act(observation, mask)
    assert torch.equal(action, clone.act(observation, mask))
    # the saved decentralised policy (policy.pt) reproduces the module's actions
    from lightning_marl.policy import load_policy, save_policy

    save_policy(tmp_path / "policy.pt", module, module.config_yaml)
    policy = load_policy(tmp_path / "policy.pt")
    expected = action if kind == DISCRETE else torch.tensor(spec.action_low) + (action + 1) * (
        torch.tensor(spec.action_high) - torch.tensor(spec.action_low)) / 2
    torch.testing.assert_close(policy.act(observation, mask), expected)
    if kind == DISCRETE:
        assert action.shape == observation.shape[:2] and action.dtype == torch.int64
    else:
        assert action.shape == (*observation.shape[:2], spec.action_dim) and action.abs().max() <= 1


def _named(module, net):
    names = {id(p): n for n, p in module.named_parameters()}
    return [(names[id(p)], p) for p in net.parameters()]


def test_unsupported_action_kind_is_refused():
    from lightning_marl.algorithms.bc import BC
    from lightning_marl.data.schema import TaskSpec

    class ContinuousOnly(BC):
        supports = (CONTINUOUS,)

    with pytest.raises(ConfigError, match="does not support discrete"):
        ContinuousOnly.from_spec(TaskSpec(n_agents=2, obs_dim=1, state_dim=2, discrete=True, n_actions=3))


def test_plugin_whose_hooks_the_method_never_calls_is_refused():
    from lightning_marl.algorithms.bc import BC
    from lightning_marl.data.schema import TaskSpec
    from lightning_marl.plugin import Plugin

    class Target(Plugin):
        def critic_target(self, batch, target, module):
            return target

    spec = TaskSpec(n_agents=2, obs_dim=1, state_dim=2, discrete=True, n_actions=3)
    with pytest.raises(PluginError, match=r"critic_target.*BC"):
        BC.from_spec(spec, plugins=[Target()])


def test_nan_loss_stops_with_a_clear_error(batches):
    from lightning_marl.algorithms.omiga import OMIGA
    from lightning_marl.errors import TrainingError

    batch, spec = batches[CONTINUOUS]
    module = OMIGA.from_spec(spec, hidden=[16, 16])
    bad = batch.clone()
    bad["next", "reward"][0] = float("nan")
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(TrainingError, match=r"non-finite loss q at iteration 0"):
        module.train_step(bad)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("terminated_dtype", [torch.bool, torch.float32])
def test_bootstrap_is_reward_plus_discounted_next_value_until_termination(terminated_dtype):
    from lightning_marl.data import schema

    batch, spec = matrix_game_transitions("climbing", [(0, 0), (1, 2)], [0.5, 0.5], n=6)
    module = registry.get("algorithm", "qmix_cql").from_spec(spec, hidden=[8], mixer_embed=4, gamma=0.9)
    terminated = torch.tensor([[True], [False], [True], [False], [False], [True]])
    batch.set(schema.TERMINATED, terminated.to(terminated_dtype))
    batch.set(schema.REWARD, torch.arange(6.0).unsqueeze(-1))
    next_value = torch.full((6, 2), 10.0)  # per-agent values broadcast against the [B, 1] reward
    expected = torch.arange(6.0).unsqueeze(-1) + 0.9 * (~terminated).float() * next_value
    assert torch.equal(module.bootstrap(batch, next_value), expected)
