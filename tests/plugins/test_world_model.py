"""World-model plugins (LOGO, MOPO ensemble): learning on VMAS, informative uncertainty, the weighted
sampler, the batch contract of synthetic rows, checkpoints and an end-to-end CLI run."""

import copy

import pytest
import torch
from lightning_marl_plugins.world_model import (
    LOGO,
    LOGOParams,
    MOPOEnsemble,
    MOPOParams,
    SyntheticBuffer,
    WorldModelAugmentation,
)
from lightning_marl_plugins.world_model.buffer import UNCERTAINTY
from lightning_marl_plugins.world_model.diagnostics import GlobalBaseline, spearman, width_for

from lightning_marl import cli
from lightning_marl.algorithms.macql import MACQL
from lightning_marl.algorithms.qmix_cql import QMIXCQL
from lightning_marl.collect.behaviour import navigation_heuristic
from lightning_marl.collect.collector import collect_transitions
from lightning_marl.collect.matrix import matrix_game_transitions
from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec, validate_transitions
from lightning_marl.envs import env_spec, make_env
from lightning_marl.nets.world_models import EnsembleLinear, parameter_count

SMALL = dict(hidden=[64, 64], batch_size=256, rollout_batch=64, capacity=2000)
SPEARMAN_MIN = 0.4  # u against the model's own squared next-state error on held-out episodes


@pytest.fixture(scope="module")
def navigation():
    """60 episodes of VMAS navigation (2 agents, 40 steps, no lidar), the scripted heuristic with
    per-episode Gaussian noise of std 0.05 or 0.2: actions stay near the heuristic's."""
    torch.manual_seed(0)
    env = make_env("vmas", "navigation", num_envs=30, seed=0, max_steps=40, n_agents=2, collisions=False)
    spec = env_spec(env)
    expert = navigation_heuristic(spec)
    g = torch.Generator().manual_seed(0)
    noise = torch.zeros(30)

    def on_reset(done):
        noise[done] = torch.tensor([0.05, 0.2])[torch.randint(2, (int(done.sum()),), generator=g)]

    def act(observation, mask=None):
        action = expert(observation) + noise.view(-1, 1, 1) * torch.randn(observation.shape[:-1] + (2,), generator=g)
        return action.clamp(-1.0, 1.0)

    td = collect_transitions(env, act, 60, spec, seed=0, progress=False, on_reset=on_reset)
    env.close()
    task = TaskSpec(n_agents=2, obs_dim=spec["obs_dim"], state_dim=spec["state_dim"], discrete=False, action_dim=2)
    return td, task


@pytest.fixture(scope="module")
def fitted_logo(navigation):
    td, spec = navigation
    torch.manual_seed(0)
    plugin = LOGO(LOGOParams(iterations=600, latent=32, context=32, **SMALL))
    module = MACQL.from_spec(spec, plugins=[plugin], hidden=[32, 32])
    plugin.setup(module, td)
    plugin.pretrain(td, module)
    return plugin, module


def test_logo_predicts_held_out_vmas_transitions_far_better_than_no_change(fitted_logo, navigation, one_thread):
    plugin, module = fitted_logo
    _, held = plugin.split(module.seed)
    result = plugin.evaluate_rows(held)
    model_mse, still_mse = float(result["state_error"].mean()), float(result["no_change_state_error"].mean())
    obs_mse, still_obs = float(result["obs_error"].mean()), float(result["no_change_obs_error"].mean())
    assert model_mse < 0.25 * still_mse and obs_mse < 0.25 * still_obs
    assert plugin.diagnostics["held_out_state_mse"] == pytest.approx(model_mse)

    # reported beside it (not asserted): one global MLP with about LOGO's parameter count
    td, spec = navigation
    width = width_for(parameter_count(plugin.model), spec)
    baseline = GlobalBaseline(LOGOParams(iterations=600, **{**SMALL, "hidden": [width, width]}))
    base_module = MACQL.from_spec(spec, hidden=[32, 32])
    baseline.setup(base_module, td)
    baseline.pretrain(td, base_module)
    global_mse = float(baseline.evaluate_rows(held)["state_error"].mean())
    print(f"\nheld-out next-state MSE (standardised): LOGO {model_mse:.4f} ({parameter_count(plugin.model)} params), "
          f"global MLP 2x{width} {global_mse:.4f} ({parameter_count(baseline.model)} params), no change {still_mse:.4f}")


def test_uncertainty_ranks_errors_and_rises_away_from_the_data(fitted_logo, one_thread):
    plugin, module = fitted_logo
    _, held = plugin.split(module.seed)
    result = plugin.evaluate_rows(held)
    rho = spearman(result["uncertainty"], result["state_error"])
    assert rho > SPEARMAN_MIN
    t = plugin.model_tensors(plugin.data.rows(held, plugin._model_keys()))
    g = torch.Generator().manual_seed(1)
    uniform = torch.rand(t["action"].shape, generator=g) * 2 - 1
    u_data = plugin.predict_mean(t["observation"], t["action"], t["state"])["uncertainty"].mean()
    u_far = plugin.predict_mean(t["observation"], uniform, t["state"])["uncertainty"].mean()
    u_negated = plugin.predict_mean(t["observation"], -t["action"], t["state"])["uncertainty"].mean()
    print(f"\nSpearman(u, error) {rho:.3f}; mean u: data actions {u_data:.3f}, uniform {u_far:.3f}, "
          f"negated {u_negated:.3f}; C {plugin.threshold:.3f}")
    assert u_far > 1.5 * u_data and u_negated > 1.5 * u_data
    # C is the 90 % quantile of u on the held-out rows
    assert (result["uncertainty"] <= plugin.threshold).float().mean() == pytest.approx(0.9, abs=0.01)


def test_weighted_sampler_draws_in_proportion_to_its_weights():
    u = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0]).repeat_interleave(torch.tensor([100, 200, 300, 200, 200]))
    buffer = SyntheticBuffer(capacity=1000, threshold=2.0, weighted=True)
    buffer.extend(TensorDictRows(u))
    group = torch.tensor([0, 1, 2, 3, 4]).repeat_interleave(torch.tensor([100, 200, 300, 200, 200]))
    draws = 20000
    counts = torch.bincount(group[buffer.sample(draws, torch.Generator().manual_seed(0))], minlength=5).double()
    weight = torch.exp((2.0 - torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0])).clamp(0, 2.0)).double()
    expected = weight * torch.tensor([100, 200, 300, 200, 200]).double()
    expected = draws * expected / expected.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    critical = 18.467  # chi-square, 4 degrees of freedom, p = 0.001
    assert chi2 < critical
    # the test has power: the same draws are far from what uniform sampling would give
    uniform = draws * torch.tensor([100, 200, 300, 200, 200]).double() / 1000
    assert float(((counts - uniform) ** 2 / uniform).sum()) > 100 * critical
    # rows with u >= C all weigh exp(0), the most certain exp(C) (relative)
    assert torch.allclose(buffer.weights[group == 4], buffer.weights[0] * torch.e**-2.0)


def TensorDictRows(u):
    from tensordict import TensorDict

    return TensorDict({UNCERTAINTY: u, "x": torch.arange(len(u))}, [len(u)])


def _climbing():
    td, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1), (2, 2)], [0.25, 0.45, 0.3], n=256, seed=0)
    td.get(schema.ACTION_MASK)[:, 1, 2] = False  # agent 1 never has action 2 available: masks must be respected
    td.get(schema.ACTION)[:, 1] = td.get(schema.ACTION)[:, 1].clamp(max=1)
    td.set(schema.NEXT_ACTION_MASK, td.get(schema.ACTION_MASK).clone())
    return td, spec


@pytest.mark.parametrize("plugin_class", [LOGO, MOPOEnsemble])
def test_synthetic_rows_follow_the_contract_and_respect_masks(plugin_class, one_thread):
    td, spec = _climbing()
    params = plugin_class.Params(iterations=150, **{**SMALL, "hidden": [32, 32]}, exploration=0.5)
    plugin = plugin_class(params)
    module = QMIXCQL.from_spec(spec, plugins=[plugin], hidden=[16, 16], mixer_embed=8)
    plugin.setup(module, td)
    plugin.pretrain(td, module)
    rows = plugin.rollout(module, torch.Generator().manual_seed(0))
    assert len(rows) == params.rollout_batch  # one-step episodes: the model predicts termination
    validate_transitions(rows.exclude(UNCERTAINTY), spec, where="synthetic rows")
    assert rows[schema.TERMINATED].all() and not rows[schema.TRUNCATED].any() and (rows[schema.EPISODE] < 0).all()
    assert not (rows[schema.ACTION][:, 1] == 2).any()  # exploration draws only available actions
    assert not rows[schema.NEXT_ACTION_MASK][:, 1, 2].any()  # the predicted next mask learned the rule

    batch = td[:64]
    mixed = plugin_class.augment_batch(plugin, batch, module)
    assert mixed.batch_size == batch.batch_size
    assert set(mixed.keys(True, True)) == set(batch.keys(True, True))
    assert int((mixed[schema.EPISODE] < 0).sum()) == 32
    validate_transitions(mixed, spec, where="mixed batch")
    stats = module.train_step(batch)  # the method's step calls the hook
    assert torch.isfinite(stats["loss/q"])


def test_mopo_penalises_reward_by_the_largest_member_std(one_thread):
    td, spec = _climbing()
    plugin = MOPOEnsemble(MOPOParams(iterations=50, **{**SMALL, "hidden": [32, 32]}, penalty=0.0))
    module = QMIXCQL.from_spec(spec, plugins=[plugin], hidden=[16, 16], mixer_embed=8)
    plugin.setup(module, td)
    plugin.pretrain(td, module)
    t = plugin.model_tensors(td[:32])
    plain = plugin.model_step(t["observation"], t["action"], t["state"], torch.Generator().manual_seed(3))
    plugin.params.penalty = 2.5
    penalised = plugin.model_step(t["observation"], t["action"], t["state"], torch.Generator().manual_seed(3))
    out = plugin.model(t["observation"], t["action"], t["state"])
    sigma = (out["log_std"][..., :spec.state_dim].exp() * plugin.model.stats.state_change.std).norm(dim=-1).max(0).values
    assert torch.allclose(plain["reward"] - penalised["reward"], 2.5 * sigma.unsqueeze(-1), atol=1e-5)
    assert torch.allclose(penalised["uncertainty"], sigma)


def test_ensemble_layer_is_one_batched_call_equal_to_separate_members():
    layer = EnsembleLinear(members=5, in_features=4, out_features=3)
    x = torch.randn(5, 7, 4)
    looped = torch.stack([x[k] @ layer.weight[k] + layer.bias[k] for k in range(5)])
    assert torch.allclose(layer(x), looped, atol=1e-6)


def test_state_round_trips_through_weights_only_checkpoints(tmp_path, one_thread):
    td, spec = _climbing()
    plugin = LOGO(LOGOParams(iterations=30, **{**SMALL, "hidden": [16, 16]}, latent=8, context=8))
    module = QMIXCQL.from_spec(spec, plugins=[plugin], hidden=[16, 16], mixer_embed=8)
    plugin.setup(module, td)
    plugin.pretrain(td, module)
    module._seed_rng()
    mixed = plugin.augment_batch(td[:32], module)
    torch.save({"plugin": plugin.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["plugin"]

    restored = LOGO(copy.deepcopy(plugin.params))
    restored.load_state_dict(state)  # before setup, as when Lightning restores a checkpoint
    module2 = QMIXCQL.from_spec(spec, plugins=[restored], hidden=[16, 16], mixer_embed=8)
    restored.setup(module2, td)
    called = []
    restored.fit = lambda *a, **k: called.append(1)
    restored.pretrain(td, module2)
    assert not called and restored.fitted and restored.threshold == plugin.threshold
    for key, value in plugin.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key]), key
    assert len(restored.buffer) == len(plugin.buffer)
    module._seed_rng(), module2._seed_rng()
    again, restored_mix = plugin.augment_batch(td[:32], module), restored.augment_batch(td[:32], module2)
    assert (again == restored_mix).all() and mixed.batch_size == again.batch_size


def test_fit_through_the_cli_checkpoints_the_world_model_and_resume_does_not_refit(
        tmp_path, climbing_dataset, monkeypatch, one_thread):
    run = tmp_path / "run"
    args = [
        "fit", "--config", "qmix_cql/climbing_logo", "algorithm.steps=20", "algorithm.batch_size=32",
        "algorithm.hidden=[16,16]", "algorithm.mixer_embed=8", f"data.path={climbing_dataset.path}",
        "plugins.0.params.iterations=40", "plugins.0.params.hidden=[16,16]", "plugins.0.params.rollout_every=10",
        "plugins.0.params.rollout_batch=32", "env.num_envs=4", "eval.episodes=4", "eval.every=0",
        f"run_dir={run}", "progress=false", "log_every=10", "checkpoint_every=10", "logger=csv",
    ]
    assert cli.main(args) == 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = checkpoint["lightning_marl"]["plugins"]
    assert state["fitted"] and state["model"] and all(torch.is_tensor(v) for v in state["model"].values())
    assert state["buffer"]["count"] > 0 and state["last_refresh"] == 10
    assert 0 < state["threshold"] and "held_out_state_mse" in state["diagnostics"]

    def refuse(*a, **k):
        raise AssertionError("the world model was refitted on resume")

    monkeypatch.setattr(WorldModelAugmentation, "fit", refuse)
    assert cli.main([*args[:3], "algorithm.steps=30", *args[4:], f"resume={run}"]) == 0
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["lightning_marl"]["iteration"] == 30
    (state2,) = resumed["lightning_marl"]["plugins"]
    for key, value in state["model"].items():
        assert torch.equal(value, state2["model"][key]), key
    assert state2["last_refresh"] == 20

    # and the resumed run ends exactly like an uninterrupted one (buffer and sampling included)
    monkeypatch.undo()
    full = tmp_path / "full"
    assert cli.main([*args[:3], "algorithm.steps=30", *[a for a in args[4:] if not a.startswith("run_dir")],
                     f"run_dir={full}"]) == 0
    uninterrupted = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    (state3,) = uninterrupted["lightning_marl"]["plugins"]
    for a, b in zip(state3["buffer"]["values"], state2["buffer"]["values"]):
        assert torch.equal(a, b)


def test_plugins_find_the_transitions_of_a_datamodule_a_dataset_or_a_tensordict(continuous_dataset):
    from lightning_marl.data.datamodule import OfflineDataModule
    from lightning_marl.errors import PluginError
    from lightning_marl.plugin import transitions_of

    transitions = continuous_dataset.transitions
    assert transitions_of(continuous_dataset) is transitions
    assert transitions_of(OfflineDataModule(continuous_dataset, 8)) is transitions
    assert transitions_of(transitions) is transitions
    # Asking for keys the dataset stores per row gathers no next-step field: memory-mapped arrays.
    from lightning_marl.data import schema
    from lightning_marl.data.dataset import load_dataset

    fresh = load_dataset(continuous_dataset.path)
    assert fresh.next_sources
    some = transitions_of(OfflineDataModule(fresh, 8), keys=[schema.ACTION, schema.STATE, ("no", "such")])
    assert set(some.keys(True, True)) == {schema.ACTION, schema.STATE}
    assert type(some.get(schema.STATE)).__name__ == "MemoryMappedTensor" and fresh._transitions is None
    with_next = transitions_of(fresh, keys=[schema.NEXT_OBS])
    assert torch.equal(with_next.get(schema.NEXT_OBS), continuous_dataset.transitions.get(schema.NEXT_OBS))
    with pytest.raises(PluginError, match="pretraining needs the training data, got int; pass the run's DataModule"):
        transitions_of(3)


def test_a_world_model_pretrains_on_a_dataset_reading_only_the_rows_it_draws(continuous_dataset):
    """On a dataset that stores next-step fields once, pretraining and rollouts read rows through
    Dataset.rows (never gathering every next observation into memory) and learn exactly what they
    learn from the same transitions held in memory."""
    from lightning_marl.data.datamodule import OfflineDataModule
    from lightning_marl.data.dataset import load_dataset
    from lightning_marl.errors import PluginError
    from lightning_marl.plugin import TrainingRows

    fresh = load_dataset(continuous_dataset.path)
    assert fresh.next_sources
    fitted = []
    for data in (OfflineDataModule(fresh, 8), continuous_dataset.transitions):
        torch.manual_seed(0)
        plugin = LOGO(LOGOParams(iterations=30, latent=8, context=8, hidden=[16, 16], batch_size=32,
                                 rollout_batch=16, capacity=200, held_out=0.3))
        module = MACQL.from_spec(fresh.spec, plugins=[plugin], hidden=[8, 8])
        plugin.setup(module, data)
        plugin.pretrain(data, module)
        rollout = plugin.rollout(module, torch.Generator().manual_seed(3))
        fitted.append((plugin, rollout))
    assert fresh._transitions is None  # nothing gathered whole
    (on_disk, rows_a), (in_memory, rows_b) = fitted
    assert on_disk.threshold == in_memory.threshold and on_disk.threshold > 0
    for a, b in zip(on_disk.model.parameters(), in_memory.model.parameters()):
        assert torch.equal(a, b)
    assert (rows_a == rows_b).all()
    rows = TrainingRows(fresh)
    index = torch.tensor([len(fresh) - 1, 0, 5])
    assert torch.equal(rows.rows(index, [schema.NEXT_OBS]).get(schema.NEXT_OBS),
                       continuous_dataset.transitions.get(schema.NEXT_OBS)[index])
    assert torch.equal(rows.column(schema.NEXT_OBS), continuous_dataset.transitions.get(schema.NEXT_OBS))
    assert fresh._transitions is None
    with pytest.raises(PluginError, match="pretraining needs the training data, got int"):
        TrainingRows(3)
