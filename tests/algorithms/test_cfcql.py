"""CFCQL: the counterfactual gaps c_i and the agent weights lambda, by hand; climbing game."""

import math

import pytest
import torch
from doubles import TableQ
from tensordict import TensorDict
from torch import nn

from lightning_marl.algorithms.cfcql import CFCQL, agent_weights, counterfactual_joint_values
from lightning_marl.collect.matrix import matrix_game_transitions
from lightning_marl.data import schema
from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.nets.qmix import QMIXMixer

T, F = True, False
SPEC_GAME = matrix_game_transitions("climbing", [(0, 0)], [1.0], n=1)[1]  # 2 agents, 3 actions


class MaxMixer(nn.Module):
    """A non-additive stand-in mixer, Q_tot = max_i Q_i, so that c_i differs from the per-agent gap."""

    def mix_values(self, values, state):
        return values.max(-1, keepdim=True).values


def make_batch(action, mask):
    b = len(action)
    done = torch.ones(b, 1, dtype=torch.bool)
    return TensorDict(
        {
            schema.OBS: torch.zeros(b, 2, 1), schema.NEXT_OBS: torch.zeros(b, 2, 1),
            schema.STATE: torch.zeros(b, 2), schema.NEXT_STATE: torch.zeros(b, 2),
            schema.ACTION: torch.tensor(action), schema.ACTION_MASK: torch.tensor(mask),
            schema.NEXT_ACTION_MASK: torch.tensor(mask), schema.REWARD: torch.zeros(b, 1),
            schema.TERMINATED: done, schema.TRUNCATED: ~done, schema.DONE: done, schema.EPISODE: torch.arange(b),
        },
        [b],
    )


# agent 0: Q = [1, 2, 0], agent 1: Q = [0, 3, 1]
BATCH = make_batch([[0, 2], [1, 1]], [[[T, T, F], [T, T, T]], [[F, T, T], [T, T, F]]])
E = math.e
# c_i: only agent i deviates (over its available actions), the other keeps its dataset action, Q_tot = max.
C = torch.tensor([
    [math.log(E ** max(1, 1) + E ** max(2, 1)) - 1,  # row 0, Q_tot(a^D) = max(1, 1)
     math.log(E ** max(1, 0) + E ** max(1, 3) + E ** max(1, 1)) - 1],
    [math.log(E ** max(2, 3) + E ** max(0, 3)) - 3,  # row 1, Q_tot(a^D) = max(2, 3)
     math.log(E ** max(2, 0) + E ** max(2, 3)) - 3],
])
# d_i: mean over the batch of the per-agent gap logsumexp_available Q_i - Q_i(a_i)
D = torch.tensor([
    (math.log(E + E**2) - 1 + math.log(E**2 + 1) - 2) / 2,
    (math.log(1 + E**3 + E) - 1 + math.log(1 + E**3) - 3) / 2,
])


def fixed_module(**overrides):
    module = CFCQL.from_spec(SPEC_GAME, hidden=[8, 8], **overrides)
    module.q = TableQ([[[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]]])
    module.mixer = MaxMixer()
    return module


@pytest.mark.parametrize("beta_w", [0.5, 0.0, 3.0])
def test_counterfactual_gaps_and_agent_weights(beta_w):
    parts = {}
    fixed_module(beta_w=beta_w).losses(BATCH, parts)
    torch.testing.assert_close(parts["counterfactual_gap"], C)
    weights = torch.exp(beta_w * D) / torch.exp(beta_w * D).sum()
    torch.testing.assert_close(parts["agent_weights"], weights)
    if beta_w == 0.0:
        torch.testing.assert_close(parts["agent_weights"], torch.tensor([0.5, 0.5]))
    assert parts["penalty"].item() == pytest.approx((C * weights).sum(-1).mean().item(), rel=1e-6)


def test_weights_favour_the_agent_furthest_from_the_data():
    gap = torch.tensor([[0.1, 2.0], [0.3, 1.0]], requires_grad=True)
    weights = agent_weights(gap, 0.5)
    assert weights[1] > weights[0] and not weights.requires_grad
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_counterfactual_q_tot_matches_mixing_each_deviation_with_the_real_mixer():
    torch.manual_seed(0)
    b, n, k = 4, 3, 5
    mixer = QMIXMixer(state_dim=6, n_agents=n, embed_dim=8)
    values, state = torch.randn(b, n, k), torch.randn(b, 6)
    action = torch.randint(0, k, (b, n))
    mixed = mixer.mix_values(counterfactual_joint_values(values, action), state).squeeze(-1)  # [B, N, K]
    for i in range(n):
        for a in range(k):
            joint = action.clone()
            joint[:, i] = a
            chosen = values.gather(-1, joint.unsqueeze(-1))  # [B, N, 1]
            torch.testing.assert_close(mixed[:, i, a], mixer(chosen, state).squeeze(-1))



def test_cfcql_stays_within_the_data_on_the_climbing_game(climbing_dataset, one_thread):
    picks = []
    for seed in range(5):
        torch.manual_seed(seed)
        module = CFCQL.from_spec(climbing_dataset.spec, hidden=[64, 64])
        datamodule = OfflineDataModule(climbing_dataset, batch_size=128, seed=seed)
        for iteration in range(300):
            module.train_step(datamodule.sample(iteration))
        picks.append(tuple(module.act(torch.zeros(1, 2, 1), torch.ones(1, 2, 3, dtype=torch.bool))[0].tolist()))
    print("cfcql picks", picks)
    assert sum(p in [(0, 0), (1, 1), (2, 2)] for p in picks) >= 4, picks
