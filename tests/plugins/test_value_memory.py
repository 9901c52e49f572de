"""OVMSE plugins: the offline value memory target (METHODS.md §4) and the two exploration rules."""

import pytest
import torch
from tensordict import TensorDict

from lightning_marl.algorithms.qmix_cql import QMIXCQL
from lightning_marl.collect.matrix import matrix_game_transitions
from lightning_marl.data import schema
from lightning_marl.errors import PluginError
from lightning_marl.registry import get

OfflineValueMemory = get("plugin", "value_memory")
SequentialExploration = get("plugin", "sequential_exploration")
EpsilonGreedy = get("plugin", "epsilon_greedy")


class Steps:
    """Stands in for a module: the plugins read only env_steps (and the rank when in a Trainer)."""

    def __init__(self, env_steps=0):
        self.env_steps = env_steps


# ---- offline value memory ---------------------------------------------------------------------
def test_blended_target_matches_the_formula_by_hand():
    from lightning_marl_plugins.value_memory.memory import blend_targets

    y = torch.tensor([[1.0], [4.0], [-2.0], [0.5]])
    q_off = torch.tensor([[3.0], [2.0], [-1.0], [0.5]])
    # y_ovm = max(q_off, y) = [3, 4, -1, 0.5]; y_mix = (1 - lambda) y + lambda y_ovm
    assert blend_targets(y, q_off, 1.0).squeeze(-1).tolist() == [3.0, 4.0, -1.0, 0.5]
    assert blend_targets(y, q_off, 0.5).squeeze(-1).tolist() == [2.0, 4.0, -1.5, 0.5]
    assert blend_targets(y, q_off, 0.0).squeeze(-1).tolist() == [1.0, 4.0, -2.0, 0.5]


@pytest.fixture
def climbing_module():
    torch.manual_seed(0)
    batch, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1), (2, 1)], [0.4, 0.4, 0.2], n=16, seed=0)
    memory = OfflineValueMemory(OfflineValueMemory.Params(anneal_env_steps=1000))
    module = QMIXCQL.from_spec(spec, plugins=[memory], hidden=[16, 16], mixer_embed=8, lr=0.05)
    return module, memory, batch


@pytest.mark.parametrize("env_steps, weight", [(0, 1.0), (500, 0.5), (1000, 0.0), (5000, 0.0)])
def test_module_target_is_y_mix_at_lambda(climbing_module, env_steps, weight, one_thread):
    module, memory, batch = climbing_module
    memory.setup(module, None)
    with torch.no_grad():
        q_off = module.q_tot(batch, module.q, module.mixer).clone()  # the offline values, before training
    for _ in range(5):  # the module moves away from the memory
        module.train_step(batch)
    module.env_steps = env_steps
    y = module.td_target(batch)
    intermediates = {}
    module.losses(batch, intermediates)
    expected = (1 - weight) * y + weight * torch.maximum(q_off, y)
    torch.testing.assert_close(intermediates["target"], expected)
    assert memory.weight(env_steps) == weight
    # the comparison is not vacuous: memory and online target disagree on some rows
    assert not torch.allclose(q_off, y, atol=1e-3)
    # the memory stayed frozen while the module trained
    torch.testing.assert_close(memory.memory_value(batch, module), q_off)


def test_default_schedule_anneals_over_500k_env_steps():
    memory = OfflineValueMemory()
    assert [memory.weight(t) for t in (0, 250_000, 500_000, 900_000)] == [1.0, 0.5, 0.0, 0.0]


def test_memory_state_round_trips_through_a_weights_only_checkpoint(climbing_module, tmp_path):
    module, memory, batch = climbing_module
    memory.setup(module, None)
    offline = memory.memory_value(batch, module).clone()
    torch.save({"plugin": memory.state_dict()}, tmp_path / "state.pt")
    for _ in range(3):
        module.train_step(batch)
    resumed = OfflineValueMemory(memory.params)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True)["plugin"])
    resumed.setup(module, None)  # a resumed run: the module holds fine-tuned weights now
    torch.testing.assert_close(resumed.memory_value(batch, module), offline)
    assert not torch.allclose(module.q_tot(batch, module.q, module.mixer), offline)


def test_memory_is_refused_by_a_method_without_a_critic_target_hook():
    from lightning_marl.algorithms.bc import BC
    from lightning_marl.data.schema import TaskSpec

    spec = TaskSpec(n_agents=2, obs_dim=1, state_dim=2, discrete=True, n_actions=3)
    with pytest.raises(PluginError, match="critic_target"):
        BC.from_spec(spec, plugins=[OfflineValueMemory()], hidden=[8])


# ---- exploration ------------------------------------------------------------------------------
def _random_problem(steps, n_envs, n_agents, n_actions, seed=0):
    """Random masks (some rows with a single available action) and a greedy action that is available."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(steps, n_envs, n_agents, n_actions, generator=g) < 0.5
    single = torch.rand(steps, n_envs, n_agents, generator=g) < 0.1
    only = torch.randint(n_actions, (steps, n_envs, n_agents), generator=g)
    mask = torch.where(single.unsqueeze(-1), torch.nn.functional.one_hot(only, n_actions).bool(), mask)
    mask[..., 0] |= ~mask.any(-1)  # at least one available action everywhere
    greedy = torch.multinomial(mask.reshape(-1, n_actions).float(), 1).reshape(steps, n_envs, n_agents)
    return greedy, mask


def _explore(plugin, greedy, mask, env_steps):
    td = TensorDict({schema.ACTION: greedy.clone(), schema.ACTION_MASK: mask}, [greedy.shape[0]])
    return plugin.explore(td, Steps(env_steps)).get(schema.ACTION)


def test_sequential_exploration_moves_at_most_one_agent_per_step():
    plugin = SequentialExploration(SequentialExploration.Params(start=1.0, end=1.0))
    always = EpsilonGreedy(EpsilonGreedy.Params(start=1.0, end=1.0))
    greedy, mask = _random_problem(steps=200, n_envs=16, n_agents=4, n_actions=8)
    deviating = torch.stack([(_explore(plugin, greedy[t], mask[t], t) != greedy[t]).sum(-1) for t in range(200)])
    assert deviating.max() == 1
    assert (deviating == 1).float().mean() > 0.5  # epsilon 1: someone deviates unless the draw repeats greedy
    # the same check catches epsilon-greedy, which moves several agents at once
    several = torch.stack([(_explore(always, greedy[t], mask[t], t) != greedy[t]).sum(-1) for t in range(200)])
    assert several.max() >= 2


def test_deviating_agent_is_uniform_over_agents():
    from lightning_marl_plugins.value_memory.exploration import sequential_deviation

    n_agents, n = 5, 20_000
    greedy = torch.zeros(n, n_agents, dtype=torch.int64)
    mask = torch.ones(n, n_agents, 6, dtype=torch.bool)
    _, who = sequential_deviation(greedy, mask, 1.0, torch.Generator().manual_seed(3))
    assert (who >= 0).all()
    counts = torch.bincount(who, minlength=n_agents).double()
    expected = n / n_agents
    chi_square = ((counts - expected) ** 2 / expected).sum().item()
    assert chi_square < 18.47  # chi-square with 4 degrees of freedom, p = 0.001
    # and the probability of deviating is epsilon
    _, who = sequential_deviation(greedy, mask, 0.2, torch.Generator().manual_seed(4))
    assert abs((who >= 0).double().mean().item() - 0.2) < 0.015


@pytest.mark.parametrize("plugin_class", [SequentialExploration, EpsilonGreedy])
def test_masked_actions_are_never_taken(plugin_class):
    plugin = plugin_class(plugin_class.Params(start=1.0, end=1.0))
    greedy, mask = _random_problem(steps=100, n_envs=16, n_agents=3, n_actions=6, seed=1)
    for t in range(100):
        action = _explore(plugin, greedy[t], mask[t], t)
        assert mask[t].gather(-1, action.unsqueeze(-1)).all()
    # a row whose only available action is the greedy one keeps it
    only = torch.zeros(4, 3, 6, dtype=torch.bool)
    only[..., 2] = True
    assert (_explore(plugin, torch.full((4, 3), 2), only, 0) == 2).all()


def test_exploration_schedule_and_shared_stream():
    plugin = SequentialExploration()  # 0.2 -> 0.05 over 50k env steps
    assert [round(plugin.epsilon(t), 6) for t in (0, 25_000, 50_000, 80_000)] == [0.2, 0.125, 0.05, 0.05]
    greedy, mask = _random_problem(steps=1, n_envs=256, n_agents=3, n_actions=6)
    first = _explore(plugin, greedy[0], mask[0], 100)
    # every agent computing the stream from the common seed at the same env step gets the same result
    assert torch.equal(first, _explore(SequentialExploration(), greedy[0], mask[0], 100))
    assert not torch.equal(first, _explore(plugin, greedy[0], mask[0], 101))
    other_seed = SequentialExploration(SequentialExploration.Params(seed=1))
    assert not torch.equal(first, _explore(other_seed, greedy[0], mask[0], 100))


def test_sequential_exploration_with_continuous_actions():
    plugin = SequentialExploration(SequentialExploration.Params(start=1.0, end=1.0))
    greedy = torch.full((64, 3, 2), 0.5)
    td = TensorDict({schema.ACTION: greedy.clone()}, [64])
    action = plugin.explore(td, Steps(0)).get(schema.ACTION)
    moved = (action != greedy).any(-1)
    assert (moved.sum(-1) == 1).all() and action.abs().max() <= 1.0
