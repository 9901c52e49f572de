"""The score-decomposition plugins: score recovery, conditioning, beta defaults, checkpointed pretraining."""

import lightning as L
import pytest
import torch
from lightning_marl_plugins.score_decomposition import BCRegulariser, ScoreDecomposition, default_beta
from lightning_marl_plugins.score_decomposition.scores import prefix_mask
from tensordict import TensorDict

from lightning_marl import registry
from lightning_marl.algorithms.omsd import OMSD
from lightning_marl.config import load_config
from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import PluginError
from lightning_marl.run import fit

MODES = torch.tensor([[1.5, 1.5], [-1.5, 1.5], [1.5, -1.5], [-1.5, -1.5]])
MODE_STD = 0.2
COSINE_THRESHOLD = 0.95  # measured: 0.984 mean cosine with 1000 iterations (0.996 with 2000)


def test_plugins_are_registered_through_the_entry_point():
    assert registry.get("plugin", "score_decomposition") is ScoreDecomposition
    assert registry.get("plugin", "bc_regulariser") is BCRegulariser


def test_score_recovery_on_a_gaussian_mixture(one_thread):
    """At the least noisy level the estimated score matches the analytic score of the noised
    mixture and points toward the nearest mode."""
    g = torch.Generator().manual_seed(0)
    n = 4096
    x0 = MODES[torch.randint(4, (n,), generator=g)] + MODE_STD * torch.randn(n, 2, generator=g)
    data = TensorDict({schema.STATE: torch.zeros(n, 1), schema.ACTION: x0[:, None]}, [n])
    spec = TaskSpec(n_agents=1, obs_dim=1, state_dim=1, discrete=False, action_dim=2)
    plugin = ScoreDecomposition(ScoreDecomposition.Params(hidden=[64, 64, 64], iterations=1000, lr=1e-3))
    module = OMSD.from_spec(spec, plugins=[plugin], hidden=[8, 8])
    torch.manual_seed(0)
    plugin.pretrain(data, module)

    alpha_bar = plugin.model.alphas_bar[0]  # level k = 1
    variance = alpha_bar * MODE_STD**2 + 1 - alpha_bar
    centres = alpha_bar.sqrt() * MODES
    m = 1000
    x = centres[torch.randint(4, (m,), generator=g)] + variance.sqrt() * torch.randn(m, 2, generator=g)
    distance = ((x[:, None] - centres) ** 2).sum(-1)
    responsibility = torch.softmax(-distance / (2 * variance), dim=-1)
    analytic = (responsibility[..., None] * (centres - x[:, None])).sum(1) / variance
    estimate = plugin.actor_regulariser(TensorDict({schema.STATE: torch.zeros(m, 1)}, [m]), x[:, None], module)[:, 0]
    cosine = torch.nn.functional.cosine_similarity(estimate, analytic, dim=-1)
    toward_nearest = torch.nn.functional.cosine_similarity(estimate, centres[distance.argmin(-1)] - x, dim=-1)
    assert cosine.mean() > COSINE_THRESHOLD, float(cosine.mean())
    assert (toward_nearest > 0).float().mean() > 0.98, float((toward_nearest > 0).float().mean())


def test_sequential_condition_masks_every_agent_not_before_in_the_order():
    spec = TaskSpec(n_agents=3, obs_dim=1, state_dim=2, discrete=False, action_dim=1)
    plugin = ScoreDecomposition(ScoreDecomposition.Params(hidden=[8], agent_order=[2, 0, 1]))
    plugin.build(spec)
    state = torch.tensor([[7.0, 8.0]])
    joint = torch.tensor([[[1.0], [2.0], [3.0]]])
    condition = plugin.condition(state, joint)  # [1, N, S + N·A]
    assert condition.shape == (1, 3, 5)
    assert torch.equal(condition[0, :, :2], state.expand(3, 2))
    assert condition[0, :, 2:].tolist() == [[0, 0, 3], [1, 0, 3], [0, 0, 0]]  # agent 2 first, then 0, then 1
    independent = ScoreDecomposition(ScoreDecomposition.Params(hidden=[8], mode="independent"))
    independent.build(spec)
    assert independent.condition(state, joint).shape == (1, 3, 2)
    assert prefix_mask([0, 1], 2).tolist() == [[0, 0], [1, 0]]


def test_beta_defaults_follow_the_dataset_quality(continuous_dataset):
    from lightning_marl.data.datamodule import OfflineDataModule

    assert (default_beta("expert"), default_beta("random"), default_beta("medium")) == (0.001, 0.3, 0.01)
    datamodule = OfflineDataModule(continuous_dataset, batch_size=8)  # quality "random"
    module = OMSD.from_spec(continuous_dataset.spec, hidden=[8, 8])
    for cls in (ScoreDecomposition, BCRegulariser):
        plugin = cls(cls.Params(**({"hidden": [8]} if cls is ScoreDecomposition else {})))
        plugin.setup(module, datamodule)
        assert plugin.beta == 0.3
        fixed = cls(cls.Params(beta=0.05, **({"hidden": [8]} if cls is ScoreDecomposition else {})))
        fixed.setup(module, datamodule)
        assert fixed.beta == 0.05


@pytest.mark.parametrize("params, message", [
    ({"mode": "joint"}, "mode must be one of"), ({"noise_schedule": "sigmoid"}, "noise_schedule"),
    ({"score_level": 6}, "score_level"), ({"beta": 0.0}, "beta must be > 0"),
])
def test_bad_params_are_refused(params, message):
    with pytest.raises(PluginError, match=message):
        ScoreDecomposition(ScoreDecomposition.Params(**params))


def test_bad_agent_order_is_refused():
    spec = TaskSpec(n_agents=3, obs_dim=1, state_dim=2, discrete=False, action_dim=1)
    with pytest.raises(PluginError, match="permutation"):
        ScoreDecomposition(ScoreDecomposition.Params(agent_order=[0, 0, 1])).build(spec)


def test_scores_before_pretraining_are_refused():
    spec = TaskSpec(n_agents=2, obs_dim=1, state_dim=2, discrete=False, action_dim=1)
    plugin = ScoreDecomposition(ScoreDecomposition.Params(hidden=[8]))
    module = OMSD.from_spec(spec, plugins=[plugin], hidden=[8, 8])
    with pytest.raises(PluginError, match="not trained"):
        plugin.actor_regulariser(TensorDict({schema.STATE: torch.zeros(1, 2)}, [1]), torch.zeros(1, 2, 1), module)


def test_bc_regulariser_points_to_the_dataset_action():
    batch = TensorDict({schema.ACTION: torch.tensor([[[0.5], [-1.0]]])}, [1])
    score = BCRegulariser().actor_regulariser(batch, torch.tensor([[[0.0], [0.0]]], requires_grad=True), None)
    assert score.tolist() == [[[0.5], [-1.0]]] and not score.requires_grad


class CrashAt(L.Callback):
    """Keeps the module and dies right after the checkpoint at ``iteration`` (a killed process)."""

    def __init__(self, iteration):
        self.iteration, self.module = iteration, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.module = module
        if module.iteration == self.iteration:
            raise RuntimeError("killed (simulated)")


def test_pretraining_is_checkpointed_and_not_redone_on_resume(tmp_path, continuous_dataset):
    def cfg(*extra):
        return load_config(None, [
            "algorithm.name=omsd", "algorithm.steps=20", "algorithm.batch_size=16", "algorithm.hidden=[16,16]",
            "algorithm.critic_pretrain_steps=7", f"data.path={continuous_dataset.path}", "env=null",
            f"run_dir={tmp_path}", "progress=false", "log_every=5", "checkpoint_every=10", "seed=3",
            "plugins=[{name: score_decomposition, params: {hidden: [16], iterations: 9, batch_size: 16}}]", *extra,
        ])

    crash = CrashAt(10)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(cfg(), extra_callbacks=[crash])
    plugin = crash.module.plugins[0]
    assert plugin.pretrain_iterations_run == 9 and crash.module.critic_pretrain_iterations_run == 7
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = saved["lightning_marl"]["plugins"][0]
    assert state["trained"] and state["beta"] == 0.3 and state["model"]  # beta from the dataset's "random" label
    assert int(saved["state_dict"]["critic_pretrained"]) == 1

    summary = fit(cfg(f"resume={tmp_path}"))
    module = summary["module"]
    assert module.iteration == 20
    assert module.plugins[0].pretrain_iterations_run == 0 and module.critic_pretrain_iterations_run == 0
    for key, value in state["model"].items():  # the resumed run scores with the checkpointed models
        assert torch.equal(module.plugins[0].model.state_dict()[key].cpu(), value), key
