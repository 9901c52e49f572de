"""bfloat16 autocast (``trainer.precision=bf16-mixed``): matmuls in bfloat16, losses in float32."""

import pytest
import torch
from torch import nn

from lightning_marl import registry
from lightning_marl.algorithms.base import CONTINUOUS, DISCRETE
from lightning_marl.collect.matrix import matrix_game_transitions

CASES = [(entry.name, kind) for entry in registry.entries("algorithm") for kind in (CONTINUOUS, DISCRETE)
         if kind in entry.obj.supports]


@pytest.fixture(scope="module")
def batches(continuous_transitions):
    td, spec = continuous_transitions
    discrete_td, discrete_spec = matrix_game_transitions("climbing", [(0, 0), (1, 2)], [0.5, 0.5], n=32)
    return {CONTINUOUS: (td[:32], spec), DISCRETE: (discrete_td, discrete_spec)}


@pytest.mark.parametrize("name, kind", CASES)
def test_bf16_autocast_runs_matmuls_in_bf16_and_losses_in_float32(name, kind, batches):
    batch, spec = batches[kind]
    torch.manual_seed(0)
    try:
        module = registry.get("algorithm", name).from_spec(spec, hidden=[16, 16])
    except Exception as error:  # methods that need a plugin to be built are covered by their own tests
        pytest.skip(f"{name} cannot be built without its plugin: {error}")
    linear_dtypes = set()
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            layer.register_forward_hook(lambda m, i, o: linear_dtypes.add(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = module.train_step(batch)
    assert torch.bfloat16 in linear_dtypes, "autocast did not reach the linear layers"
    for key, value in stats.items():
        assert value.dtype == torch.float32, f"{key} is {value.dtype}"
        assert torch.isfinite(value), key
    assert all(p.dtype == torch.float32 for p in module.parameters())  # float32 master weights


def test_outputs_of_networks_are_float32_under_autocast(batches):
    batch, spec = batches[CONTINUOUS]
    module = registry.get("algorithm", "omiga").from_spec(spec, hidden=[16, 16])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, log_std = module.actor(batch["agents", "observation"])
    assert mean.dtype == log_std.dtype == torch.float32


def test_a_forward_after_the_step_in_the_same_autocast_region_uses_the_new_weights(batches):
    """PyTorch keeps autocast's cast weights for the whole region, optimiser steps or not; the step
    drops them, so a network called again in the same region (bf16-mixed wraps the whole
    training step in one) computes with the updated weights."""
    batch, spec = batches[CONTINUOUS]
    torch.manual_seed(0)
    module = registry.get("algorithm", "omiga").from_spec(spec, hidden=[16, 16], lr=1e-1)
    observation = batch["agents", "observation"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before, _ = module.actor(observation)
        module.train_step(batch)
        same_region, _ = module.actor(observation)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh_region, _ = module.actor(observation)
    assert not torch.equal(before, fresh_region)
    assert torch.equal(same_region, fresh_region)


@pytest.mark.parametrize("precision, autocast", [("bf16-mixed", True), ("32-true", False)])
def test_pretraining_runs_under_the_trainers_precision(precision, autocast, tmp_path, continuous_dataset, monkeypatch):
    """Plugin pretraining and OMSD's critic pretraining run in ``on_train_start``, outside the
    autocast region Lightning puts around ``training_step``; they get the same context."""
    from lightning_marl_plugins.score_decomposition.scores import ScoreDecomposition

    from lightning_marl.algorithms.omsd import OMSD
    from lightning_marl.config import load_config
    from lightning_marl.run import fit

    seen = {"plugin": [], "critic": []}
    plugin_pretrain, critic_losses = ScoreDecomposition.pretrain, OMSD.critic_losses

    def recording_pretrain(self, datamodule, module):
        seen["plugin"].append(torch.is_autocast_enabled("cpu"))
        return plugin_pretrain(self, datamodule, module)

    def recording_critic_losses(self, batch, *args, **kwargs):
        if not bool(self.critic_pretrained):
            seen["critic"].append(torch.is_autocast_enabled("cpu"))
        return critic_losses(self, batch, *args, **kwargs)

    monkeypatch.setattr(ScoreDecomposition, "pretrain", recording_pretrain)
    monkeypatch.setattr(OMSD, "critic_losses", recording_critic_losses)
    fit(load_config(None, [
        "algorithm.name=omsd", "algorithm.steps=3", "algorithm.batch_size=16", "algorithm.hidden=[16,16]",
        "algorithm.critic_pretrain_steps=2", f"data.path={continuous_dataset.path}", "env=null",
        f"run_dir={tmp_path}", "progress=false", f"trainer.precision={precision}",
        "plugins=[{name: score_decomposition, params: {hidden: [16], iterations: 2, batch_size: 16}}]",
    ]))
    assert seen == {"plugin": [autocast], "critic": [autocast, autocast]}
