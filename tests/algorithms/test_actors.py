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


def _log_prob_reference(heads: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """METHODS.md §1 written out with autograd's own operations (as the actor computed it before)."""
    import math

    import torch.nn.functional as F

    from lightning_marl.nets.actors import ACTION_CLAMP

    size = action.shape[-1]
    mean = heads[..., :size].clamp(-MEAN_CLAMP, MEAN_CLAMP)
    log_std = heads[..., size:].clamp(LOG_STD_MIN, LOG_STD_MAX)
    u = torch.atanh(action.clamp(-ACTION_CLAMP, ACTION_CLAMP))
    gaussian = -((u - mean) ** 2) / (2 * torch.exp(2 * log_std)) - log_std - 0.5 * math.log(2 * math.pi)
    squash = 2 * (math.log(2) - u - F.softplus(-2 * u))
    return (gaussian - squash).sum(-1)


def test_fused_log_prob_matches_the_formula_in_values_and_gradients_with_active_clamps():
    from lightning_marl.nets.actors import tanh_gaussian_log_prob

    torch.manual_seed(0)
    heads = torch.randn(64, 3, 4) * 6  # many means beyond ±9 and log-stds beyond [-5, 2]: clamps active
    heads[0, 0] = torch.tensor([MEAN_CLAMP, -MEAN_CLAMP, LOG_STD_MIN, LOG_STD_MAX])  # exactly at the bounds
    action = torch.rand(64, 3, 2) * 2 - 1
    action[1, 0, 0] = 1.0  # clamped before atanh
    weights = torch.randn(64, 3)
    fused = heads.clone().requires_grad_()
    value = tanh_gaussian_log_prob(fused, action)
    assert type(value.grad_fn).__name__ == "_TanhGaussianLogProbBackward"
    (value * weights).sum().backward()
    plain = heads.clone().requires_grad_()
    expected = _log_prob_reference(plain, action)
    (expected * weights).sum().backward()
    scale = expected.abs().clamp(min=1)
    assert ((value - expected).abs() / scale).max() < 1e-6
    assert ((fused.grad - plain.grad).abs() / plain.grad.abs().clamp(min=1)).max() < 1e-6
    clamped = (heads[..., :2].abs() > MEAN_CLAMP)
    assert clamped.any() and (fused.grad[..., :2][clamped] == 0).all()
    with torch.no_grad():
        assert torch.equal(tanh_gaussian_log_prob(fused, action), value.detach())

