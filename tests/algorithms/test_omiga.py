"""OMIGA reproduces the authors' implementation on a tiny fixed problem (fixtures/README)."""

import json
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from lightning_marl.algorithms.omiga import OMIGA
from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec

CASES = json.loads((Path(__file__).parents[1] / "fixtures" / "omiga_reference.json").read_text())["cases"]


def _load_linear(linear, weight, bias):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))


def _load_mlp(net, params):
    for index, linear in enumerate(net.linears, start=1):
        _load_linear(linear, params[f"W{index}"], params[f"b{index}"])


def _load_mixer(mixer, params):
    _load_linear(mixer.hidden, params["W1"], params["b1"])
    _load_linear(mixer.weights, params["W_w"], params["b_w"])
    _load_linear(mixer.bias, params["W_b"], params["b_b"])


def build_case(case):
    dims, hyper, params = case["dims"], case["hyper"], case["params"]
    n = dims["n_agents"]
    spec = TaskSpec(
        n_agents=n, obs_dim=dims["obs_dim"], state_dim=n * dims["state_dim"], discrete=False,
        action_dim=dims["act_dim"], agent_state_dim=dims["state_dim"],
    )
    module = OMIGA.from_spec(
        spec, alpha=hyper["alpha"], gamma=hyper["gamma"], tau=hyper["tau"], lr=hyper["lr"],
        grad_clip=hyper["grad_norm_clip"], hidden=[dims["hidden"]] * 2, mixer_hidden=dims["mixer_hidden"],
    )
    actor = params["actor"]
    first, second, heads = module.actor.linears
    _load_linear(first, actor["W1"], actor["b1"])
    _load_linear(second, actor["W2"], actor["b2"])
    _load_linear(heads, [*actor["W_mu"], *actor["W_logstd"]], [*actor["b_mu"], *actor["b_logstd"]])
    for name in ("q", "q_target", "v", "v_target"):
        _load_mlp(getattr(module, name), params[name])
    _load_mixer(module.mixer, params["mixer"])
    _load_mixer(module.mixer_target, params["mixer_target"])

    b = {k: torch.tensor(v) for k, v in case["batch"].items()}
    size = b["obs"].shape[0]
    not_done = b["not_done"]
    batch = TensorDict(
        {
            schema.OBS: b["obs"], schema.NEXT_OBS: b["next_obs"],
            schema.AGENT_STATE: b["state"], schema.NEXT_AGENT_STATE: b["next_state"],
            schema.STATE: b["state"].flatten(1), schema.NEXT_STATE: b["next_state"].flatten(1),
            schema.ACTION: b["action"], schema.REWARD: b["reward"],
            schema.TERMINATED: not_done == 0, schema.TRUNCATED: torch.zeros_like(not_done, dtype=torch.bool),
            schema.DONE: not_done == 0, schema.EPISODE: torch.arange(size),
        },
        [size],
    )
    return module, batch


@pytest.mark.parametrize("case", CASES, ids=[f"alpha={c['hyper']['alpha']}" for c in CASES])
def test_intermediates_losses_and_gradients_match_reference(case):
    module, batch = build_case(case)
    expected = case["expected"]
    intermediates = {}
    losses = module.losses(batch, intermediates)
    for name, value in expected["intermediates"].items():
        torch.testing.assert_close(intermediates[name], torch.tensor(value), atol=1e-5, rtol=1e-5, msg=name)
    for ours, theirs in (("q", "q_loss"), ("v", "v_loss"), ("policy", "policy_loss")):
        assert losses[ours].item() == pytest.approx(expected["losses_before"][theirs], abs=1e-5, rel=1e-5)

    groups = {"policy": "policy", "q": "q_and_mixer", "v": "v"}
    for ours, theirs in groups.items():
        params = [p for net in module.parameter_groups()[ours] for p in net.parameters()]
        grads = torch.autograd.grad(losses[ours], params, retain_graph=True)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        assert norm == pytest.approx(expected["grad_norms_before_clipping"][theirs], rel=1e-4, abs=1e-6)

    mean_raw, log_std = module.actor.raw(batch[schema.OBS])
    assert int((mean_raw.abs() > 9).sum()) == expected["clamps_binding"]["mean_clamped"]
    assert int(((log_std < -5) | (log_std > 2)).sum()) == expected["clamps_binding"]["logstd_clamped"]


@pytest.mark.parametrize("case", CASES, ids=[f"alpha={c['hyper']['alpha']}" for c in CASES])
def test_three_training_steps_match_reference(case):
    module, batch = build_case(case)
    for after in case["expected"]["losses_after_steps"]:
        module.train_step(batch)
        with torch.no_grad():
            losses = module.losses(batch)
        for ours, theirs in (("q", "q_loss"), ("v", "v_loss"), ("policy", "policy_loss")):
            assert losses[ours].item() == pytest.approx(after[theirs], abs=1e-4 * max(1.0, abs(after[theirs])))
    assert module.iteration == 3
