"""The plain PyTorch loops of benchmarks/methods_throughput.py compute what ours computes.

Same initial weights and batch -> the same losses and clipped gradients to 1e-5, so the
throughput baselines stay honest; a deliberately wrong plain loop must be caught.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import methods_throughput as mt  # noqa: E402


@pytest.mark.parametrize("n", [3, 6])
@pytest.mark.parametrize("name", sorted(mt.CASES))
def test_plain_loop_matches_ours(name, n):
    ok, detail = mt.check_equivalence(mt.CASES[name], n)
    assert ok, detail


def _wrong_gamma(plain):
    plain.gamma = 0.9


@pytest.mark.parametrize("name", sorted(mt.CASES))
def test_a_wrong_plain_loop_is_caught(name, monkeypatch):
    ok, detail = mt.check_equivalence(mt.CASES[name], 3, perturb=_wrong_gamma)
    assert not ok, detail
    eye = mt.agent_ids  # all-zero agent ids: the networks lose the agent's identity
    monkeypatch.setattr(mt, "agent_ids", lambda b, n: torch.zeros_like(eye(b, n)))
    ok, detail = mt.check_equivalence(mt.CASES[name], 3)
    assert not ok, detail


def test_td3_gradients_are_compared_on_an_actor_step():
    """The check runs TD3 where the actor steps: a wrong actor weight alpha shows in its gradients."""
    def wrong_alpha(plain):
        plain.alpha = 1.0

    ok, detail = mt.check_equivalence(mt.CASES["matd3bc"], 3, perturb=wrong_alpha)
    assert not ok and "clipped gradients by 0.0e+00" not in detail, detail


def _param_diff(detail: str) -> float:
    return float(detail.rsplit("by ", 1)[1])


def test_parameters_after_one_step_stay_close():
    """Adam and the Polyak loop too: after one step every parameter (targets included) is within
    ~lr of ours; a wrong Polyak rate shows there."""
    def wrong_tau(plain):
        plain.tau = 0.5

    for name in sorted(mt.CASES):
        _, detail = mt.check_equivalence(mt.CASES[name], 3)
        assert _param_diff(detail) < 2e-5, (name, detail)
        _, detail = mt.check_equivalence(mt.CASES[name], 3, perturb=wrong_tau)
        assert _param_diff(detail) > 5e-5, (name, detail)  # ~0.5·lr
