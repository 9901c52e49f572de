"""OMSD: the surrogate actor loss, the sequential prefix logic (one_pass and exact), the saved
policy, and (slow) the multimodal continuous agree game."""

import copy

import pytest
import torch
from tensordict import TensorDict

from lightning_marl.algorithms.omsd import OMSD
from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec
from lightning_marl.plugin import Plugin

SPEC = TaskSpec(n_agents=3, obs_dim=2, state_dim=4, discrete=False, action_dim=2)


class FixedScore(Plugin):
    """A regulariser returning a fixed score; records what the method passed it."""

    def __init__(self, score, beta=0.5, agent_order=None):
        super().__init__()
        self.score, self.beta, self.agent_order, self.calls = score, beta, agent_order, []

    def actor_regulariser(self, batch, actions, module, agent=None):
        actors = [[p.detach().clone() for p in a.parameters()] for a in getattr(module.actor, "actors", [module.actor])]
        self.calls.append({"actions": actions.clone(), "agent": agent, "actors": actors,
                           "requires_grad": actions.requires_grad})
        return self.score.expand_as(actions)


def hand_batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = SPEC.n_agents
    return TensorDict({
        schema.OBS: torch.randn(b, n, 2, generator=g), schema.NEXT_OBS: torch.randn(b, n, 2, generator=g),
        schema.STATE: torch.randn(b, 4, generator=g), schema.NEXT_STATE: torch.randn(b, 4, generator=g),
        schema.ACTION: torch.rand(b, n, 2, generator=g) * 2 - 1, schema.REWARD: torch.randn(b, 1, generator=g),
        schema.TERMINATED: torch.tensor([[True], [False], [False], [True]]),
    }, [b])


SCORE = torch.tensor([[[0.5, -1.0], [2.0, 0.0], [-0.3, 0.7]]])  # [1, N, A]


def test_one_pass_surrogate_matches_the_hand_computed_loss():
    torch.manual_seed(0)
    plugin = FixedScore(SCORE, beta=0.5)
    module = OMSD.from_spec(SPEC, plugins=[plugin], hidden=[8, 8])
    batch = hand_batch()
    losses = module.losses(batch)
    with torch.no_grad():
        pi = module.actor(batch[schema.OBS])
        q = module.q(batch[schema.STATE], pi).min(0).values  # [B, 1]
        expected = (-q.squeeze(-1) - (1 / 0.5) * (SCORE * pi).sum((-2, -1))).mean()
        v = module.v(batch[schema.NEXT_STATE])
        target = batch[schema.REWARD] + 0.99 * (~batch[schema.TERMINATED]).float() * v
        q_loss = ((module.q(batch[schema.STATE], batch[schema.ACTION]) - target) ** 2).sum(0).mean()
    torch.testing.assert_close(losses["policy"], expected)
    torch.testing.assert_close(losses["q"], q_loss)
    # one_pass: one call, every agent's score conditioned on this step's actions (no gradient)
    (call,) = plugin.calls
    assert call["agent"] is None and not call["requires_grad"]
    torch.testing.assert_close(call["actions"], pi)


def test_one_pass_gradient_is_the_sum_of_the_per_agent_sequential_losses():
    """sum_i of -Q(s, a_<i, pi_i, a_>i) - w·score_i·pi_i, others detached, has the one-pass gradient."""
    torch.manual_seed(1)
    module = OMSD.from_spec(SPEC, plugins=[FixedScore(SCORE, beta=0.25)], hidden=[8, 8])
    batch = hand_batch(seed=1)
    params = list(module.actor.parameters())
    one_pass = torch.autograd.grad(module.losses(batch)["policy"], params)
    state, total = batch[schema.STATE], [torch.zeros_like(p) for p in params]
    for i in range(SPEC.n_agents):
        pi = module.actor(batch[schema.OBS])
        mine = (torch.arange(SPEC.n_agents) == i).view(-1, 1)
        action = torch.where(mine, pi, pi.detach())
        loss = module.surrogate_loss(batch, state, action, pi.detach(), agent=i)
        total = [t + g for t, g in zip(total, torch.autograd.grad(loss, params))]
    for a, b in zip(one_pass, total):
        torch.testing.assert_close(a, b)


def exact_agents_in_order(order, lr):
    """An ``exact`` OMSD whose plugin records each agent's call, a copy of it and a batch."""
    torch.manual_seed(2)
    plugin = FixedScore(SCORE, beta=1.0, agent_order=order)
    module = OMSD.from_spec(SPEC, plugins=[plugin], hidden=[8, 8], sequential="exact", lr=lr)
    return module, plugin, copy.deepcopy(module), hand_batch(seed=2)


def test_exact_updates_agents_in_order_against_the_updated_prefix():
    order = [2, 0, 1]
    module, plugin, initial, batch = exact_agents_in_order(order, lr=1e-2)
    module.train_step(batch)
    final = module
    assert [c["agent"] for c in plugin.calls] == order
    observation = batch[schema.OBS]
    with torch.no_grad():
        before, after = initial.actor(observation), final.actor(observation)
    for k, call in enumerate(plugin.calls):
        done, todo = order[:k], order[k:]
        for j in range(SPEC.n_agents):
            reference = final if j in done else initial
            # only the agents already stepped have moved (Adam never moves an agent before its turn)
            for p, q in zip(call["actors"][j], reference.actor.actors[j].parameters()):
                assert torch.equal(p, q), (k, j)
        torch.testing.assert_close(call["actions"][:, done], after[:, done])  # prefix: updated actors
        torch.testing.assert_close(call["actions"][:, todo], before[:, todo])  # own and suffix: current ones
    for j in range(SPEC.n_agents):
        assert not torch.equal(before[:, j], after[:, j])
    assert module.iteration == 1


def test_exact_under_bf16_autocast_conditions_on_the_updated_prefix():
    """bf16-mixed runs the whole step in one autocast region, whose cast weights PyTorch would keep
    across the agents' optimiser steps: the prefix must be the updated actors' actions."""
    order = [2, 0, 1]
    module, plugin, initial, batch = exact_agents_in_order(order, lr=1e-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.train_step(batch)
    observation = batch[schema.OBS]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before, after = initial.actor(observation), module.actor(observation)
    for k, call in enumerate(plugin.calls[1:], start=1):
        done = order[:k]
        assert not torch.equal(before[:, done], after[:, done])
        torch.testing.assert_close(call["actions"][:, done], after[:, done])


def test_saved_policy_holds_only_the_actors(tmp_path):
    from lightning_marl.policy import load_policy, save_policy

    for sequential in ("one_pass", "exact"):
        module = OMSD.from_spec(SPEC, hidden=[8, 8], sequential=sequential)
        save_policy(tmp_path / "policy.pt", module, module.config_yaml)
        saved = torch.load(tmp_path / "policy.pt", weights_only=True)["state_dict"]
        assert saved and all(k.startswith("actor.") for k in saved), sorted(saved)
        observation = torch.randn(5, 3, 2)
        torch.testing.assert_close(load_policy(tmp_path / "policy.pt").act(observation), module.act(observation))


def test_critic_pretraining_runs_once_and_is_saved():
    from lightning_marl.collect.matrix import continuous_agree_transitions

    class Stream:  # the part of the DataModule pretrain_critic uses
        def __init__(self, td):
            self.td = td

        def sample_for_rank(self, rank, iteration):
            g = torch.Generator().manual_seed(iteration)
            return self.td[torch.randint(len(self.td), (16,), generator=g)]

    td, spec = continuous_agree_transitions(64, n_agents=2, seed=0)
    module = OMSD.from_spec(spec, hidden=[8, 8], critic_pretrain_steps=5)
    q_before = copy.deepcopy(module.q.state_dict())
    module.pretrain_critic(Stream(td))
    assert module.critic_pretrain_iterations_run == 5 and int(module.critic_pretrained) == 1
    assert any(not torch.equal(v, module.q.state_dict()[k]) for k, v in q_before.items())
    resumed = OMSD.from_spec(spec, hidden=[8, 8], critic_pretrain_steps=5)
    resumed.load_state_dict(module.state_dict())  # what a checkpoint restores before on_train_start
    resumed.pretrain_critic(Stream(td))
    assert resumed.critic_pretrain_iterations_run == 0


def test_bad_sequential_value_is_refused():
    from lightning_marl.errors import ConfigError

    with pytest.raises(ConfigError, match="sequential must be one of"):
        OMSD.from_spec(SPEC, hidden=[8, 8], sequential="both")


# ---- learning on the continuous agree game (slow) -------------------------------------------------
AGREE_AGENTS = 3


@pytest.fixture(scope="module")
def two_mode_agree(tmp_path_factory):
    """Continuous agree, 3 agents: half the rows near (+1, +1, +1), half near (-1, -1, -1), nothing between."""
    from lightning_marl.collect.matrix import continuous_agree_transitions
    from lightning_marl.data.dataset import write_dataset

    plus, spec = continuous_agree_transitions(1000, n_agents=AGREE_AGENTS, good_fraction=1.0, mode=1.0, seed=0)
    minus, _ = continuous_agree_transitions(1000, n_agents=AGREE_AGENTS, good_fraction=1.0, mode=-1.0, seed=1)
    td = torch.cat([plus, minus])
    td[schema.EPISODE] = torch.arange(len(td))
    env = {"name": "matrix", "task": "agree", "params": {"n_agents": AGREE_AGENTS, "continuous": True}}
    return write_dataset(tmp_path_factory.mktemp("data") / "agree2", td, {"spec": spec, "quality": "expert", "env": env})


def agree_joint_action(dataset, seed, regulariser="sequential", steps=300, diffusion_iterations=2000, **method):
    """The greedy joint action [N] after training OMSD (or BC with ``regulariser='bc'``) with ``seed``;
    ``method``: OMSD hyper-parameters (e.g. ``sequential="exact"``: per-agent actors)."""
    from lightning_marl_plugins.score_decomposition import BCRegulariser, ScoreDecomposition

    from lightning_marl.algorithms.bc import BC
    from lightning_marl.data.datamodule import OfflineDataModule

    torch.manual_seed(seed)
    datamodule = OfflineDataModule(dataset, batch_size=128, seed=seed)
    if regulariser == "bc":
        module = BC.from_spec(dataset.spec, hidden=[64, 64])
    else:
        plugin = BCRegulariser() if regulariser == "bc_regulariser" else ScoreDecomposition(ScoreDecomposition.Params(
            hidden=[64, 64, 64], iterations=diffusion_iterations, lr=1e-3, mode=regulariser))
        module = OMSD.from_spec(dataset.spec, plugins=[plugin], hidden=[64, 64], lr=3e-3, critic_pretrain_steps=200,
                                **method)
        module.seed = seed
        plugin.setup(module, datamodule)
        plugin.pretrain(datamodule, module)
        module.pretrain_critic(datamodule)
    for iteration in range(steps):
        module.train_step(datamodule.sample(iteration))
    with torch.no_grad():
        return module.act(torch.zeros(1, AGREE_AGENTS, 1))[0, :, 0]


def in_one_mode(action, margin=0.5):
    """Every agent on the same side, beyond ``margin`` (reward then above 1 - (1 - margin)² = 0.75)."""
    return bool((action > margin).all() or (action < -margin).all())


def _report(name, picks):
    from lightning_marl.envs.matrix_games import payoff

    rewards = [float(payoff("agree", a.view(1, -1, 1))[0]) for a in picks]
    print(f"{name:28s} one mode {sum(map(in_one_mode, picks))}/5  mean reward {sum(rewards) / 5:.3f}  "
          f"actions {[[round(x, 2) for x in a.tolist()] for a in picks]}")


@pytest.mark.slow
@pytest.mark.parametrize("sequential", ["one_pass", "exact"])
def test_omsd_lands_in_one_mode_of_the_agree_game(two_mode_agree, one_thread, sequential):
    """Sequential scores put every agent on the same side in >= 4 of 5 seeds. Reported, not asserted:
    the independent-score ablation (with the per-agent actors of ``exact`` it lands between the
    modes in most seeds; the shared actor of ``one_pass`` coordinates it through its weights)."""
    picks = [agree_joint_action(two_mode_agree, seed, "sequential", sequential=sequential) for seed in range(5)]
    independent = [agree_joint_action(two_mode_agree, seed, "independent", sequential=sequential) for seed in range(5)]
    _report(f"omsd {sequential}", picks)
    _report(f"independent scores {sequential}", independent)
    assert sum(map(in_one_mode, picks)) >= 4, picks


@pytest.mark.slow
def test_report_bc_on_the_agree_game(two_mode_agree, one_thread):
    """Reported, not asserted: per-agent BC and the BC regulariser average the two modes (actions near 0)."""
    _report("bc (tanh-Gaussian)", [agree_joint_action(two_mode_agree, seed, "bc") for seed in range(5)])
    _report("omsd + bc_regulariser", [agree_joint_action(two_mode_agree, seed, "bc_regulariser") for seed in range(5)])


@pytest.mark.slow
@pytest.mark.parametrize("sequential, strategy", [("one_pass", "ddp"), ("exact", "ddp_find_unused_parameters_true")])
def test_omsd_under_ddp_keeps_the_ranks_identical(tmp_path, continuous_dataset, sequential, strategy):
    """Two CPU ranks, the diffusion and critic pre-training run on each: parameters stay identical."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    out = tmp_path / "ranks"
    out.mkdir()
    overrides = [
        "algorithm.name=omsd", f"algorithm.sequential={sequential}", "algorithm.steps=5", "algorithm.batch_size=16",
        "algorithm.hidden=[16,16]", "algorithm.critic_pretrain_steps=5", f"data.path={continuous_dataset.path}",
        "plugins=[{name: score_decomposition, params: {hidden: [16], iterations: 5, batch_size: 16}}]",
        f"run_dir={tmp_path / 'run'}", "progress=false", "log_every=1", "trainer.devices=2",
        f"trainer.strategy={strategy}", "trainer.accelerator=cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(root / "tests")}
    result = subprocess.run([sys.executable, str(root / "tests" / "ddp_worker.py"), str(out), *overrides],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 5
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"ranks differ in {key}"
