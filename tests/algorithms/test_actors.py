"""nets.actors: the tanh-Gaussian actor's heads are one layer, and older state dicts still load."""

import torch

from lightning_marl.algorithms.omiga import OMIGA
from lightning_marl.data.schema import TaskSpec
from lightning_marl.nets.actors import LOG_STD_MAX, LOG_STD_MIN, MEAN_CLAMP, TanhGaussianActor


def _old_layout(state: dict, prefix: str, action_dim: int) -> dict:
    """The same weights as the actor had them before its heads were merged: trunk, mean, log_std."""
    old = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            old[key] = value
        elif key.startswith(prefix + "net.net.4."):
            name = key.rsplit(".", 1)[1]
            old[f"{prefix}mean.{name}"] = value[:action_dim].clone()
            old[f"{prefix}log_std.{name}"] = value[action_dim:].clone()
        else:
            old[prefix + "trunk.net." + key[len(prefix + "net.net."):]] = value
    return old


def test_heads_split_one_output_layer_and_clamp():
    torch.manual_seed(0)
    actor = TanhGaussianActor(obs_dim=3, action_dim=2, n_agents=2, hidden=(8, 8))
    observation = torch.randn(5, 2, 3) * 100
    mean_raw, log_std_raw = actor.raw(observation)
    out = actor.net(observation)
    assert torch.equal(mean_raw, out[..., :2]) and torch.equal(log_std_raw, out[..., 2:])
    mean, log_std = actor(observation)
    assert torch.equal(mean, mean_raw.clamp(-MEAN_CLAMP, MEAN_CLAMP))
    assert torch.equal(log_std, log_std_raw.clamp(LOG_STD_MIN, LOG_STD_MAX))


def test_a_state_dict_with_separate_heads_loads_into_a_whole_method():
    spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
    torch.manual_seed(0)
    saved = OMIGA.from_spec(spec, hidden=[8, 8], mixer_hidden=4)
    old = _old_layout(saved.state_dict(), "actor.", action_dim=2)
    assert "actor.mean.weight" in old and "actor.trunk.net.2.bias" in old and "actor.net.net.0.weight" not in old
    torch.manual_seed(1)
    restored = OMIGA.from_spec(spec, hidden=[8, 8], mixer_hidden=4)
    restored.load_state_dict(old)
    observation = torch.randn(5, 2, 3)
    for a, b in zip(saved.actor(observation), restored.actor(observation)):
        assert torch.equal(a, b)
