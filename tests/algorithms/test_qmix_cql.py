"""QMIX-CQL: the masked CQL penalty, the double-Q target and the QMIX mixer, by hand; climbing game."""

import copy
import math

import pytest
import torch
from doubles import TableQ
from tensordict import TensorDict
from torch import nn

from lightning_marl.algorithms.qmix_cql import QMIXCQL, cql_gap, greedy
from lightning_marl.collect.matrix import matrix_game_transitions
from lightning_marl.data import schema
from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.nets.qmix import QMIXMixer
from lightning_marl.plugin import Plugin

T, F = True, False
SPEC_GAME = matrix_game_transitions("climbing", [(0, 0)], [1.0], n=1)[1]  # 2 agents, 3 actions, obs 1, state 2


class SumMixer(nn.Module):
    def mix_values(self, values, state):
        return values.sum(-1, keepdim=True)


def make_batch(action, mask, next_mask, reward, terminated, truncated, obs=0, next_obs=1):
    b = len(action)
    terminated = torch.tensor(terminated).reshape(b, 1)
    truncated = torch.tensor(truncated).reshape(b, 1)
    return TensorDict(
        {
            schema.OBS: torch.full((b, 2, 1), float(obs)), schema.NEXT_OBS: torch.full((b, 2, 1), float(next_obs)),
            schema.STATE: torch.zeros(b, 2), schema.NEXT_STATE: torch.zeros(b, 2),
            schema.ACTION: torch.tensor(action), schema.ACTION_MASK: torch.tensor(mask),
            schema.NEXT_ACTION_MASK: torch.tensor(next_mask), schema.REWARD: torch.tensor(reward).reshape(b, 1),
            schema.TERMINATED: terminated, schema.TRUNCATED: truncated, schema.DONE: terminated | truncated,
            schema.EPISODE: torch.arange(b),
        },
        [b],
    )


# obs 0: agent 0 [1, 2, 0], agent 1 [0, 3, 1]; obs 1 (next): online and target tables differ.
CURRENT = [[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]]
ONLINE_NEXT = [[5.0, 4.0, 9.0], [1.0, 7.0, 2.0]]
TARGET_NEXT = [[10.0, 20.0, 30.0], [100.0, 200.0, 300.0]]
BATCH = dict(
    action=[[0, 2], [1, 1]],
    mask=[[[T, T, F], [T, T, T]], [[F, T, T], [T, T, F]]],
    next_mask=[[[T, T, F], [T, F, T]]] * 2,
    reward=[1.0, 2.0], terminated=[F, T], truncated=[T, F],
)


def fixed_module(**overrides):
    module = QMIXCQL.from_spec(SPEC_GAME, hidden=[8, 8], **overrides)
    module.q = TableQ([CURRENT, ONLINE_NEXT])
    module.q_target = TableQ([CURRENT, TARGET_NEXT])
    module.mixer = module.mixer_target = SumMixer()
    return module


def test_cql_penalty_excludes_unavailable_actions():
    parts = {}
    fixed_module().losses(make_batch(**BATCH), parts)
    e = math.e
    expected = torch.tensor([
        [math.log(e + e**2) - 1, math.log(1 + e**3 + e) - 3 + 2],  # row 0: a = (0, 2); action 2 of agent 0 masked
        [math.log(e**2 + 1) - 2, math.log(1 + e**3) - 3],  # row 1: a = (1, 1); agent 0's a0, agent 1's a2 masked
    ])
    torch.testing.assert_close(parts["cql_gap"], expected)
    assert parts["penalty"].item() == pytest.approx(expected.mean().item(), rel=1e-6)


def random_q_values(rows: int, seed: int):
    """float64 values [rows, 3, 9] of scale 5, data actions, and masks (~60 % available, the data action always)."""
    torch.manual_seed(seed)
    values = torch.randn(rows, 3, 9, dtype=torch.float64) * 5
    action = torch.randint(9, (rows, 3))
    mask = torch.rand(rows, 3, 9) < 0.6
    mask.scatter_(-1, action.unsqueeze(-1), True)
    return values, action, mask


def test_cql_gap_as_one_node_equals_autograds_logsumexp_in_values_and_gradients():
    values, action, mask = random_q_values(32, seed=0)
    weights = torch.randn(32, 3, dtype=torch.float64)
    fused = values.clone().requires_grad_()
    gap = cql_gap(fused, action, mask)
    assert type(gap.grad_fn).__name__ == "_CQLGapBackward"
    (gap * weights).sum().backward()
    plain = values.clone().requires_grad_()
    expected = plain.masked_fill(~mask, float("-inf")).logsumexp(-1) - plain.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(gap, expected)
    torch.testing.assert_close(fused.grad, plain.grad)
    assert (fused.grad[~mask] == 0).all()
    assert torch.autograd.gradcheck(lambda v: cql_gap(v, action[:4], mask[:4]), (values[:4].clone().requires_grad_(),))
    # float32 values give a float32 gap; a row without available actions gives -inf, as torch's logsumexp
    empty = torch.zeros(1, 1, 9, dtype=torch.bool)
    assert cql_gap(torch.ones(1, 1, 9), torch.zeros(1, 1, dtype=torch.long), empty).item() == float("-inf")
    assert cql_gap(values.float(), action, None).dtype == torch.float32


def test_online_values_of_o_and_next_o_come_from_one_pass_and_match_separate_calls():
    torch.manual_seed(0)
    batch, spec = matrix_game_transitions("climbing", [(0, 0), (1, 2)], [0.5, 0.5], n=64)
    module = QMIXCQL.from_spec(spec, hidden=[256, 256], mixer_embed=8)
    values, online_next = module.online_values(batch)
    assert online_next is not None and not online_next.requires_grad
    assert type(values.grad_fn).__name__ == "_OneDNNMLPBackward"  # the fused route ran
    torch.testing.assert_close(values, module.agent_values(module.q, batch))
    with torch.no_grad():
        torch.testing.assert_close(online_next, module.agent_values(module.q, batch, next=True))
        torch.testing.assert_close(module.next_value(batch, online_next), module.next_value(batch))


def test_double_q_target_uses_online_argmax_over_available_next_actions():
    parts = {}
    module = fixed_module()
    losses = module.losses(make_batch(**BATCH), parts)
    # online argmax over AVAILABLE next actions: agent 0 -> 0 (9 masked), agent 1 -> 2 (7 masked);
    # the target tables evaluate there: 10 + 300. Row 0 is truncated (bootstraps), row 1 terminated.
    torch.testing.assert_close(parts["target"], torch.tensor([[1.0 + 0.99 * 310.0], [2.0]]))
    q_tot = torch.tensor([[1.0 + 1.0], [2.0 + 3.0]])  # dataset actions under the sum mixer
    td = ((q_tot - parts["target"]) ** 2).mean()
    assert losses["q"].item() == pytest.approx((td + parts["penalty"]).item(), rel=1e-6)
    assert fixed_module(alpha=0.0).losses(make_batch(**BATCH))["q"].item() == pytest.approx(td.item(), rel=1e-6)


def test_critic_target_hook_receives_the_td_target():
    class Shift(Plugin):
        def critic_target(self, batch, target, module):
            return target + 100.0

    module = fixed_module()
    module.plugins = [Shift()]
    parts = {}
    module.losses(make_batch(**BATCH), parts)
    torch.testing.assert_close(parts["target"], module.td_target(make_batch(**BATCH)) + 100.0)


def test_act_is_greedy_over_available_actions():
    torch.manual_seed(0)
    values = torch.randn(50, 2, 3)
    mask = torch.rand(50, 2, 3) < 0.5
    mask[..., 1] |= ~mask.any(-1)  # at least one available action per agent
    picked = greedy(values, mask)
    assert mask.gather(-1, picked.unsqueeze(-1)).all()
    torch.testing.assert_close(values.gather(-1, picked.unsqueeze(-1)).squeeze(-1),
                               values.masked_fill(~mask, -1e9).max(-1).values)
    module = QMIXCQL.from_spec(SPEC_GAME, hidden=[8, 8])
    observation = torch.randn(50, 2, 1)
    assert torch.equal(module.act(observation, mask), greedy(module.q(observation), mask))


def test_mixer_is_torchrl_qmix_and_mixes_many_joint_actions_at_once():
    torch.manual_seed(0)
    mixer = QMIXMixer(state_dim=4, n_agents=3, embed_dim=32)
    state, values = torch.randn(6, 4), torch.randn(6, 5, 3, requires_grad=True)
    mixed = mixer.mix_values(values, state)
    assert mixed.shape == (6, 5, 1)
    for m in range(5):  # torchrl's forward, one joint action at a time
        torch.testing.assert_close(mixed[:, m], mixer(values[:, m].unsqueeze(-1), state))
    (gradient,) = torch.autograd.grad(mixed.sum(), values)
    assert (gradient >= 0).all()  # monotonic in every agent's value


def test_one_joint_action_per_state_mixes_as_torchrl_in_values_and_gradients():
    """One joint action per state takes broadcast products and one fused hypernetwork product."""
    torch.manual_seed(0)
    mixer = QMIXMixer(state_dim=51, n_agents=3, embed_dim=32)
    state, values = torch.randn(128, 51), torch.randn(128, 3, requires_grad=True)
    ours, theirs = mixer.mix_values(values, state), mixer(values.unsqueeze(-1), state)
    torch.testing.assert_close(ours, theirs)
    inputs = [values, *mixer.parameters()]
    for a, b in zip(torch.autograd.grad(ours.pow(2).sum(), inputs), torch.autograd.grad(theirs.pow(2).sum(), inputs)):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5  # summation order differs


def test_q_tot_helpers_and_frozen_copy(climbing_dataset):
    module = QMIXCQL.from_spec(climbing_dataset.spec, hidden=[8, 8], mixer_embed=4)
    batch = climbing_dataset.transitions[:16]
    values = module.q(batch[schema.OBS]).gather(-1, batch[schema.ACTION].unsqueeze(-1))
    torch.testing.assert_close(module.q_tot(batch, module.q, module.mixer), module.mixer(values, batch[schema.STATE]))
    q, mixer = module.frozen_copy()
    assert not any(p.requires_grad for p in [*q.parameters(), *mixer.parameters()])
    torch.testing.assert_close(module.q_tot(batch, q, mixer), module.q_tot(batch, module.q, module.mixer))
    assert all(k.startswith(("q.", "obs_")) for k in module.state_dict() if k.startswith(module.policy_prefixes()))
    with pytest.raises(ValueError, match="next joint action"):
        module.q_tot(batch, q, mixer, next=True)


def test_saved_policy_holds_the_agent_q_network(tmp_path, climbing_dataset):
    from lightning_marl.policy import load_policy, save_policy

    module = QMIXCQL.from_spec(climbing_dataset.spec, hidden=[8, 8], mixer_embed=4)
    save_policy(tmp_path / "policy.pt", module, module.config_yaml)
    saved = torch.load(tmp_path / "policy.pt", weights_only=True)["state_dict"]
    assert saved and all(k.startswith("q.") for k in saved)
    observation, mask = torch.randn(7, 2, 1), torch.rand(7, 2, 3) < 0.7
    mask[..., 0] = True
    assert torch.equal(load_policy(tmp_path / "policy.pt").act(observation, mask), module.act(observation, mask))



def greedy_joint_action(method, dataset, seed, steps=300, **hparams):
    torch.manual_seed(seed)
    module = method.from_spec(dataset.spec, hidden=[64, 64], **hparams)
    datamodule = OfflineDataModule(dataset, batch_size=128, seed=seed)
    for iteration in range(steps):
        module.train_step(datamodule.sample(iteration))
    return tuple(module.act(torch.zeros(1, 2, 1), torch.ones(1, 2, 3, dtype=torch.bool))[0].tolist())


def test_qmix_cql_stays_within_the_data_on_the_climbing_game(climbing_dataset, one_thread):
    picks = [greedy_joint_action(QMIXCQL, climbing_dataset, seed) for seed in range(5)]
    print("qmix_cql picks", picks)
    assert sum(p in [(0, 0), (1, 1), (2, 2)] for p in picks) >= 4, picks


def test_chosen_and_gap_from_one_node_equal_gather_and_logsumexp_in_values_and_gradients():
    from lightning_marl.algorithms.qmix_cql import chosen_and_gap

    values, action, mask = random_q_values(16, seed=1)
    w_data, w_gap = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    fused = values.clone().requires_grad_()
    data, gap = chosen_and_gap(fused, action, mask)
    assert data.grad_fn is gap.grad_fn, "one autograd node for both"
    ((data * w_data).sum() + (gap * w_gap).sum()).backward()
    plain = values.clone().requires_grad_()
    expected_data = plain.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    expected_gap = plain.masked_fill(~mask, float("-inf")).logsumexp(-1) - expected_data
    ((expected_data * w_data).sum() + (expected_gap * w_gap).sum()).backward()
    torch.testing.assert_close(data, expected_data)
    torch.testing.assert_close(gap, expected_gap)
    torch.testing.assert_close(fused.grad, plain.grad)
    # Either output alone, and both, pass gradcheck; without gradients the same values come back.
    small = values[:3].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: chosen_and_gap(v, action[:3], mask[:3])[0], (small,))
    assert torch.autograd.gradcheck(lambda v: chosen_and_gap(v, action[:3], mask[:3]), (small,))
    with torch.no_grad():
        untracked = chosen_and_gap(values, action, mask)
    torch.testing.assert_close(untracked[0], expected_data.detach())
    torch.testing.assert_close(untracked[1], expected_gap.detach())


@pytest.mark.parametrize("input_grad", [False, True])
def test_stacked_linear_node_equals_the_layers_in_values_and_gradients(input_grad):
    from lightning_marl.nets.qmix import stacked_linear

    torch.manual_seed(0)
    layers = [torch.nn.Linear(51, out) for out in (96, 32, 32, 32)]
    reference = copy.deepcopy(layers)
    x = torch.randn(128, 51, requires_grad=input_grad)
    x_reference = x.detach().clone().requires_grad_(input_grad)
    out = stacked_linear(x, layers)
    assert type(out.grad_fn).__name__ == "_StackedLinearBackward"
    expected = torch.cat([layer(x_reference) for layer in reference], -1)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for layer, ref in zip(layers, reference):
        for p, q in ((layer.weight, ref.weight), (layer.bias, ref.bias)):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
            assert p.grad.is_contiguous()
    if input_grad:
        torch.testing.assert_close(x.grad, x_reference.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # without gradients: one product, no node
        assert stacked_linear(x, layers).grad_fn is None


@pytest.mark.parametrize("frozen", [False, True])
def test_mixing_one_joint_action_as_one_node_equals_torchrls_forward(frozen):
    torch.manual_seed(0)
    mixer = QMIXMixer(state_dim=51, n_agents=3, embed_dim=32)
    if frozen:  # e.g. a frozen copy (offline value memory) under a loss that differentiates the values
        mixer.requires_grad_(False)
    reference = copy.deepcopy(mixer)
    state, values = torch.randn(128, 51), torch.randn(128, 3, requires_grad=True)
    values_reference = values.detach().clone().requires_grad_()
    ours = mixer.mix_values(values, state)
    assert type(ours.grad_fn).__name__ == "_MixOneBackward"
    expected = reference(values_reference.unsqueeze(-1), state)  # torchrl's QMixer.forward
    torch.testing.assert_close(ours, expected)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(values.grad, values_reference.grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(mixer.named_parameters(), reference.parameters(), strict=True):
        if frozen:
            assert p.grad is None and q.grad is None
        else:
            assert float((p.grad - q.grad).abs().max() / q.grad.abs().max()) < 1e-5, name
    with torch.no_grad():
        assert mixer.mix_values(values, state).grad_fn is None
