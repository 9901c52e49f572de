"""The OMIGA baselines of benchmarks/throughput.py compute what ours computes, and the matmul
floor replays exactly the step's matrix products.

Same initial weights and batch -> the same losses and clipped gradients to 1e-5 for the plain
loop and for the reference-style loop; a wrong loop is caught.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import throughput as tp  # noqa: E402
from matmul_floor import MatmulReplay, record_matmuls  # noqa: E402

from lightning_marl.nets.linear import onednn_route_enabled  # noqa: E402


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("loop", [tp.PlainOMIGA, tp.ReferenceStyleOMIGA])
def test_baseline_matches_ours(loop, n):
    ok, detail = tp.check_equivalence(n, loop=loop)
    assert ok, detail


def test_a_wrong_baseline_is_caught(monkeypatch):
    original = tp.ReferenceStyleOMIGA.compute_losses

    def wrong_alpha(self, *inputs):
        self._alpha = 5.0
        return original(self, *inputs)

    monkeypatch.setattr(tp.ReferenceStyleOMIGA, "compute_losses", wrong_alpha)
    ok, detail = tp.check_equivalence(3, loop=tp.ReferenceStyleOMIGA)
    assert not ok, detail


def test_reference_style_step_returns_its_diagnostics():
    torch.manual_seed(0)
    module = tp.build_ours(3)
    loop = tp.build_plain(module, tp.ReferenceStyleOMIGA)
    batch = tp.random_transitions(3, tp.BATCH, torch.Generator().manual_seed(0))
    diagnostics = loop.train_step(*tp.plain_inputs(batch))
    assert {"q_loss", "v_loss", "policy_loss", "w1", "w2", "q_target_values2"} <= set(diagnostics)
    assert all(torch.isfinite(value) for value in diagnostics.values())


@pytest.mark.parametrize("bf16", [False, True])
def test_matmul_floor_replays_the_steps_products(bf16):
    torch.manual_seed(0)
    module = tp.build_ours(3)
    batches = [tp.random_transitions(3, tp.BATCH, torch.Generator().manual_seed(i)) for i in range(2)]
    step = tp.bf16_step(module) if bf16 else module.train_step
    step(batches[0])
    products = record_matmuls(step, batches[1])
    dtypes = {layout[3] for _, (_, args, _, _) in products for layout in args if layout[0] == "tensor"}
    assert dtypes == {torch.bfloat16 if bf16 else torch.float32}
    replay = MatmulReplay(products)
    assert replay.flops() == tp.count_flops(step, batches[1])
    # Layer by layer: forward of 5 networks (3 layers each; the actor's mean and log-std heads are
    # one layer) and of the mixer 3 times (24 addmm), backward of 4 networks (20 mm). On the
    # oneDNN route the trained networks run as one node each, whose one-output layers (Q_i and
    # V_i) take their input gradient as a broadcast product: 2 mm fewer.
    fused = not bf16 and onednn_route_enabled()
    assert len(replay.calls) == (42 if fused else 44)


def test_our_step_dispatches_fewer_compute_operations_than_the_plain_loops():
    """On an accelerator each compute operation is a kernel launch: ours issues under half."""
    from matmul_floor import count_operations

    torch.manual_seed(0)
    module = tp.build_ours(3)
    batch = tp.random_transitions(3, tp.BATCH, torch.Generator().manual_seed(0))
    loops = [tp.build_plain(module, loop) for loop in (tp.PlainOMIGA, tp.ReferenceStyleOMIGA)]
    module.train_step(batch)  # after a first step: optimiser state exists, as in a run
    for loop in loops:
        loop.train_step(*tp.plain_inputs(batch))
    ours = count_operations(module.train_step, batch)
    for loop in loops:
        plain = count_operations(lambda x: loop.train_step(*x), tp.plain_inputs(batch))
        assert ours[1] < 0.5 * plain[1], (type(loop).__name__, ours, plain)
        assert 0 < ours[1] < ours[0]
