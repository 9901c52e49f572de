"""ClippedAdam and clip_group_gradients against torch.optim.Adam and clip_grad_norm_."""

import copy

import pytest
import torch
from torch import nn

from lightning_marl.nets.optim import ClippedAdam, clip_group_gradients


def two_groups(seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList([nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)), nn.Linear(5, 2)])


def loss_of(nets: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    # Scaled so that the first group's gradient norm is far above the clip and the second's below.
    return 50.0 * nets[0](x).pow(2).sum() + 1e-3 * nets[1](x).sum()


def reference_run(nets, batches, max_norm, lrs):
    optimizers = [torch.optim.Adam(net.parameters(), lr=lr) for net, lr in zip(nets, lrs)]
    norms = []
    for x in batches:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_of(nets, x).backward()
        step_norms = []
        for net, optimizer in zip(nets, optimizers):
            step_norms.append(torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm))
            optimizer.step()
        norms.append(step_norms)
    return norms, optimizers


def clipped_run(nets, batches, max_norm, lrs):
    optimizers = [ClippedAdam(net.parameters(), lr=lr) for net, lr in zip(nets, lrs)]
    norms = []
    for x in batches:
        for net in nets:
            for p in net.parameters():
                p.grad = None
        loss_of(nets, x).backward()
        step_norms, scales = clip_group_gradients([list(net.parameters()) for net in nets], max_norm)
        for optimizer, scale in zip(optimizers, scales):
            optimizer.grad_scale = scale
            optimizer.step()
        norms.append(step_norms)
    return norms, optimizers


def test_clipped_adam_follows_clip_grad_norm_and_adam_over_several_steps():
    batches = [torch.randn(32, 5, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    ours, theirs = two_groups(), two_groups()
    our_norms, our_optimizers = clipped_run(ours, batches, 1.0, (1e-2, 3e-3))
    their_norms, _ = reference_run(theirs, batches, 1.0, (1e-2, 3e-3))
    assert our_optimizers[0]._state_lists is not None, "the fused fast path must have run after the first step"
    for mine, reference in zip(our_norms, their_norms):
        torch.testing.assert_close(torch.stack(mine), torch.stack(reference), rtol=1e-5, atol=1e-6)
    assert float(their_norms[0][0]) > 1.0 > float(their_norms[0][1]), "the test must clip one group and not the other"
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)  # .grad holds the clipped gradient


def test_state_dict_is_torch_adams_both_ways():
    batches = [torch.randn(16, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    nets = two_groups()
    _, optimizers = clipped_run(nets, batches, 1.0, (1e-2, 1e-2))
    state = copy.deepcopy(optimizers[0].state_dict())
    plain = torch.optim.Adam(nets[0].parameters(), lr=1e-2)
    plain.load_state_dict(copy.deepcopy(state))  # load_state_dict keeps (shares) the given tensors
    assert float(plain.state_dict()["state"][0]["step"]) == 3.0

    # Loading a (changed) state invalidates the cached lists: the next step uses the loaded tensors.
    resumed = ClippedAdam(nets[0].parameters(), lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(state))
    reference = torch.optim.Adam(copy.deepcopy(nets[0]).parameters(), lr=1e-2)
    reference.load_state_dict(copy.deepcopy(state))
    for p, q in zip(nets[0].parameters(), reference.param_groups[0]["params"]):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    resumed.step()
    reference.step()
    for p, q in zip(nets[0].parameters(), reference.param_groups[0]["params"]):
        torch.testing.assert_close(p, q)
    assert float(resumed.state_dict()["state"][0]["step"]) == 4.0
    assert resumed._state_lists is not None
    resumed.load_state_dict(copy.deepcopy(state))
    assert resumed._state_lists is None, "a loaded state must replace the cached tensor lists"


def test_missing_gradients_fall_back_to_adam_and_still_clip():
    net = nn.Linear(3, 2)
    extra = nn.Parameter(torch.zeros(4))  # never receives a gradient
    optimizer = ClippedAdam([*net.parameters(), extra], lr=0.1)
    for _ in range(2):  # the second step has states, but a None gradient: the fallback path
        net.weight.grad, net.bias.grad = torch.full((2, 3), 3.0), torch.full((2,), 4.0)
        norms, scales = clip_group_gradients([[*net.parameters(), extra]], max_norm=1.0)
        optimizer.grad_scale = scales[0]
        optimizer.step()
    expected = (6 * 9.0 + 2 * 16.0) ** 0.5
    assert float(norms[0]) == pytest.approx(expected)
    total = torch.cat([net.weight.grad.flatten(), net.bias.grad]).norm()
    assert float(total) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(extra, torch.zeros(4)) and extra.grad is None


def test_clip_group_gradients_of_groups_without_gradients():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    b.grad = torch.tensor([0.0, 2.0])
    norms, scales = clip_group_gradients([[a], [b]], max_norm=1.0)
    assert [float(n) for n in norms] == [0.0, pytest.approx(2.0)]
    assert float(scales[0]) == 1.0 and float(scales[1]) == pytest.approx(2.0, rel=1e-5)
    norms, scales = clip_group_gradients([[a]], max_norm=1.0)
    assert float(norms[0]) == 0.0 and float(scales[0]) == 1.0


def test_step_hooks_and_the_profiler_range_still_work_without_torchs_per_call_wrapper():
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import profile

    parameter = nn.Parameter(torch.zeros(3))
    optimizer = ClippedAdam([parameter], lr=0.1)
    assert getattr(type(optimizer).step, "hooked", False), "torch must not wrap ClippedAdam.step"
    seen = []
    pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append("pre"))
    post = optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append("post"))
    everywhere = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen.append("global"))
    parameter.grad = torch.ones(3)
    optimizer.step()
    assert seen == ["pre", "post", "global"]
    for handle in (pre, post, everywhere):
        handle.remove()
    optimizer.step()
    assert seen == ["pre", "post", "global"], "removed hooks must not run"
    with profile() as prof:
        optimizer.step()
    assert "Optimizer.step#ClippedAdam.step" in {event.name for event in prof.events()}
    assert torch.allclose(parameter, torch.full((3,), -0.3), atol=1e-5), "three Adam steps of lr 0.1"


def test_clip_group_gradients_of_three_groups_one_empty_in_the_middle():
    a, b, c = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(1))
    a.grad, c.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.5])
    extra = nn.Parameter(torch.zeros(2))
    extra.grad = torch.tensor([0.0, 12.0])
    norms, scales = clip_group_gradients([[a, extra], [b], [c]], max_norm=1.0)
    assert [float(n) for n in norms] == [pytest.approx(13.0), 0.0, pytest.approx(0.5)]
    assert [float(s) for s in scales] == [pytest.approx(13.0, rel=1e-5), 1.0, 1.0]
