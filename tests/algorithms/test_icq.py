"""ICQ: the critic's and the actor's softmax weights over the batch, by hand; the next-action
requirement; the climbing game."""

import math

import pytest
import torch
from doubles import TableQ
from tensordict import TensorDict
from torch import nn

from lightning_marl.algorithms.icq import ICQ
from lightning_marl.collect.matrix import matrix_game_transitions
from lightning_marl.data import schema
from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.data.dataset import Dataset
from lightning_marl.data.next_action import NEXT_ACTION, add_next_actions
from lightning_marl.errors import DatasetError

T, F = True, False
SPEC_GAME = matrix_game_transitions("climbing", [(0, 0)], [1.0], n=1)[1]  # 2 agents, 3 actions
E = math.e


class SumMixer(nn.Module):
    def mix_values(self, values, state):
        return values.sum(-1, keepdim=True)


def make_batch(next_action=True, terminated=(F, T)):
    terminated = torch.tensor(terminated).reshape(2, 1)
    truncated = torch.zeros(2, 1, dtype=torch.bool)
    mask = torch.tensor([[[T, T, F], [T, T, T]], [[F, T, T], [T, T, F]]])
    batch = TensorDict(
        {
            schema.OBS: torch.zeros(2, 2, 1), schema.NEXT_OBS: torch.ones(2, 2, 1),
            schema.STATE: torch.zeros(2, 2), schema.NEXT_STATE: torch.zeros(2, 2),
            schema.ACTION: torch.tensor([[0, 2], [1, 1]]), schema.ACTION_MASK: mask,
            schema.NEXT_ACTION_MASK: torch.ones(2, 2, 3, dtype=torch.bool), schema.REWARD: torch.tensor([[1.0], [2.0]]),
            schema.TERMINATED: terminated, schema.TRUNCATED: truncated, schema.DONE: terminated | truncated,
            schema.EPISODE: torch.arange(2),
        },
        [2],
    )
    if next_action:
        batch[NEXT_ACTION] = torch.tensor([[1, 0], [2, 1]])
    return batch


def fixed_module(**overrides):
    module = ICQ.from_spec(SPEC_GAME, hidden=[8, 8], **overrides)
    module.q = TableQ([[[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]], [[0.0] * 3] * 2])  # obs 0: the current Q_i
    module.q_target = TableQ([[[0.0] * 3] * 2, [[10.0, 20.0, 30.0], [100.0, 200.0, 300.0]]])  # obs 1: next
    module.mixer = module.mixer_target = SumMixer()
    module.actor.logits_net = TableQ([[[0.0, 0.0, 5.0], [1.0, 0.0, 0.0]]])
    return module


def test_critic_weights_are_a_softmax_over_the_batch_of_the_next_in_sample_value():
    parts = {}
    losses = fixed_module(critic_temperature=100.0).losses(make_batch(), parts)
    next_value = torch.tensor([20.0 + 100.0, 30.0 + 200.0])  # Q̄_tot(s', a'_D) at a'_D = (1, 0) and (2, 1)
    weights = torch.exp(next_value / 100.0) / torch.exp(next_value / 100.0).sum()
    torch.testing.assert_close(parts["critic_weights"].squeeze(-1), weights)
    target = torch.tensor([1.0 + 0.99 * 120.0, 2.0])  # row 1 terminated
    torch.testing.assert_close(parts["target"].squeeze(-1), target)
    q_tot = torch.tensor([1.0 + 1.0, 2.0 + 3.0])  # dataset actions (0, 2) and (1, 1)
    assert losses["q"].item() == pytest.approx((weights * (q_tot - target) ** 2).sum().item(), rel=1e-6)
    default = {}
    fixed_module().losses(make_batch(), default)  # T_c = 1000: close to uniform
    torch.testing.assert_close(default["critic_weights"].squeeze(-1), torch.softmax(next_value / 1000.0, 0))


def test_actor_weights_are_a_softmax_over_the_batch_of_masked_advantages():
    parts = {}
    losses = fixed_module().losses(make_batch(), parts)
    # pi over available actions from logits [0, 0, 5] (agent 0) and [1, 0, 0] (agent 1);
    # A_i = Q_i(a_i) - sum_a pi_i(a) Q_i(a), Q_0 = [1, 2, 0], Q_1 = [0, 3, 1].
    advantage = torch.tensor([
        [1.0 - (0.5 * 1 + 0.5 * 2), 1.0 - (E * 0 + 3 + 1) / (E + 2)],  # row 0: a = (0, 2)
        [2.0 - 2 / (1 + E**5), 3.0 - 3 / (E + 1)],  # row 1: a = (1, 1)
    ])
    torch.testing.assert_close(parts["advantage"], advantage)
    weights = torch.exp(advantage / 0.1) / torch.exp(advantage / 0.1).sum(0)
    torch.testing.assert_close(parts["actor_weights"], weights)
    log_pi = torch.tensor([[math.log(0.5), -math.log(E + 2)], [-math.log(1 + E**5), -math.log(E + 1)]])
    torch.testing.assert_close(parts["log_pi"], log_pi)
    assert losses["policy"].item() == pytest.approx(-(weights * log_pi).sum(0).mean().item(), rel=1e-5)


def test_next_action_is_required_for_non_terminal_rows():
    module = fixed_module()
    with pytest.raises(DatasetError, match="add_next_actions"):
        module.losses(make_batch(next_action=False))
    # every row terminal: a'_D is multiplied by 0; the current action stands in, as add_next_actions writes it
    terminal = make_batch(next_action=False, terminated=(T, T))
    prepared = add_next_actions(terminal)
    assert torch.equal(prepared[NEXT_ACTION], terminal[schema.ACTION])
    assert module.losses(terminal)["q"].item() == module.losses(prepared)["q"].item()



def test_icq_picks_the_best_joint_action_in_the_data(climbing_dataset, one_thread):
    dataset = Dataset(climbing_dataset.path, add_next_actions(climbing_dataset.transitions), climbing_dataset.metadata)
    picks = []
    for seed in range(5):
        torch.manual_seed(seed)
        module = ICQ.from_spec(dataset.spec, hidden=[64, 64])
        datamodule = OfflineDataModule(dataset, batch_size=128, seed=seed)
        for iteration in range(300):
            module.train_step(datamodule.sample(iteration))
        picks.append(tuple(module.act(torch.zeros(1, 2, 1), torch.ones(1, 2, 3, dtype=torch.bool))[0].tolist()))
    print("icq picks", picks)
    assert sum(p == (0, 0) for p in picks) >= 4, picks
