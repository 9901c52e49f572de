"""add_next_actions: the next row of the same episode, or the current action where it is unknown."""

import pytest
import torch
from tensordict import TensorDict

from lightning_marl.data import schema
from lightning_marl.data.next_action import NEXT_ACTION, add_next_actions
from lightning_marl.errors import DatasetError

T, F = True, False


def transitions(action):
    #          ep 0: 3 steps, terminated | ep 1: truncated | ep 2: cut, no flag | ep 3: dataset ends, no flag
    episode = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    terminated = torch.tensor([F, F, T, F, F, F, F, F]).unsqueeze(-1)
    truncated = torch.tensor([F, F, F, F, T, F, F, F]).unsqueeze(-1)
    return TensorDict(
        {schema.ACTION: action, schema.EPISODE: episode, schema.TERMINATED: terminated,
         schema.TRUNCATED: truncated, schema.DONE: terminated | truncated},
        [8],
    )


def test_next_action_is_the_following_row_of_the_same_episode():
    action = torch.stack([torch.arange(8), 10 + torch.arange(8)], -1)  # discrete [T, N]
    td = transitions(action)
    out = add_next_actions(td)
    following = [1, 2, 2, 4, 4, 5, 7, 7]  # rows 2 (terminated), 4 (truncated), 5 and 7 (episode ends) keep their own
    assert torch.equal(out[NEXT_ACTION], action[following])
    assert NEXT_ACTION not in td.keys(include_nested=True)  # the input is left alone
    assert out[schema.ACTION] is td[schema.ACTION]


def test_continuous_actions_and_empty_transitions():
    action = torch.randn(8, 3, 2)
    out = add_next_actions(transitions(action))
    assert torch.equal(out[NEXT_ACTION], action[[1, 2, 2, 4, 4, 5, 7, 7]])
    empty = add_next_actions(transitions(action)[:0])
    assert empty[NEXT_ACTION].shape == (0, 3, 2)


def test_memory_mapped_dataset(climbing_dataset):
    td = climbing_dataset.transitions
    out = add_next_actions(td)
    assert torch.equal(out[NEXT_ACTION], td[schema.ACTION])  # one-step episodes: every row terminates
    assert NEXT_ACTION not in td.keys(include_nested=True)


def test_refuses_more_than_one_batch_dimension():
    td = transitions(torch.zeros(8, 2, dtype=torch.int64))
    with pytest.raises(DatasetError, match="one batch dimension"):
        add_next_actions(td.reshape(2, 4))
