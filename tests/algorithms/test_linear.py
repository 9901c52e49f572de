"""nets.linear: float32 CPU products in oneDNN, equal to F.linear in values and gradients."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_marl.nets.ensemble import EnsembleMLP
from lightning_marl.nets.linear import (
    Linear,
    ReLUMLP,
    linear,
    onednn_is_faster_here,
    onednn_matmul_available,
    onednn_route_enabled,
    uses_onednn,
)

needs_onednn = pytest.mark.skipif(not onednn_matmul_available(), reason="oneDNN's linear kernel is not available")


@pytest.fixture(autouse=True)
def route_on(monkeypatch):
    """The route on whatever this CPU's timing says, so that these tests test it everywhere."""
    monkeypatch.setenv("LIGHTNING_MARL_ONEDNN", "1")


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference).abs().max() / reference.abs().max())


@needs_onednn
@pytest.mark.parametrize("shape, relu, with_bias", [((128, 3, 256), False, True), ((128, 3, 256), True, True),
                                                     ((384, 20), True, True), ((384, 256), True, False)])
def test_linear_matches_float64_in_values_and_every_gradient(shape, relu, with_bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(256, shape[-1], requires_grad=True)
    bias = torch.randn(256, requires_grad=True) if with_bias else None
    assert uses_onednn(x, weight)
    with OpNames() as ops:
        out = linear(x, weight, bias, relu=relu)
    assert any("_linear_pointwise" in name for name in ops.names), "the product must run in oneDNN"
    assert not any("relu" in name for name in ops.names), "the ReLU must be fused into the product"
    grad = torch.randn_like(out)
    out.backward(grad)

    x64, w64, b64 = (None if t is None else t.detach().double().requires_grad_(True) for t in (x, weight, bias))
    reference = F.linear(x64, w64, b64)
    reference = reference.relu() if relu else reference
    reference.backward(grad.double())
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert relative_error(out, reference) < 1e-5
    with torch.no_grad():  # nothing to differentiate: the same values without the autograd.Function
        torch.testing.assert_close(linear(x, weight, bias, relu=relu), out.detach())
    pairs = [(x.grad, x64.grad), (weight.grad, w64.grad)] + ([(bias.grad, b64.grad)] if with_bias else [])
    for mine, theirs in pairs:
        assert relative_error(mine, theirs) < 1e-5


def test_small_products_autocast_and_other_dtypes_take_f_linear():
    small = torch.randn(8, 4), torch.randn(3, 4)
    assert not uses_onednn(*small)
    x, weight = torch.randn(384, 256), torch.randn(256, 256)
    assert not uses_onednn(x.double(), weight.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, weight)
        assert linear(x, weight).dtype == torch.bfloat16  # autocast applies as to F.linear


@needs_onednn
def test_auto_follows_the_timing_which_runs_outside_dispatch_modes(monkeypatch):
    monkeypatch.setenv("LIGHTNING_MARL_ONEDNN", "auto")
    onednn_is_faster_here.cache_clear()
    with OpNames() as ops:  # e.g. the benchmarks' operation counter around a first step
        faster = onednn_is_faster_here()
    assert ops.names == [], "the timing must not show up in a caller's dispatch mode"
    assert onednn_route_enabled() == faster
    monkeypatch.setenv("LIGHTNING_MARL_ONEDNN", "0")
    assert not onednn_route_enabled() and not uses_onednn(torch.randn(384, 256), torch.randn(256, 256))


def test_the_environment_switch_turns_onednn_off():
    code = ("import torch; from lightning_marl.nets.linear import uses_onednn; "
            "print(uses_onednn(torch.randn(384, 256), torch.randn(256, 256)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**__import__("os").environ, "LIGHTNING_MARL_ONEDNN": "0"})
    assert result.stdout.strip() == "False"


def test_relu_mlp_keeps_torchrls_state_dict_and_computes_the_same():
    from torchrl.modules import MLP

    torch.manual_seed(0)
    ours = ReLUMLP(20, 3, [256, 256])
    theirs = MLP(in_features=20, out_features=3, num_cells=[256, 256], activation_class=nn.ReLU)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(128, 3, 20)
    ours(x).pow(2).sum().backward()
    theirs(x).pow(2).sum().backward()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    last = ReLUMLP(20, 8, [16], activate_last_layer=True)
    assert (last(torch.randn(5, 20)) >= 0).all()
    assert isinstance(ours[0], Linear) and isinstance(copy.deepcopy(ours)[2], Linear)


@needs_onednn
def test_ensemble_members_through_onednn_equal_separate_networks():
    torch.manual_seed(0)
    ensemble = EnsembleMLP(members=2, in_features=21, out_features=1, hidden=(256, 256))
    separate = [nn.Sequential(nn.Linear(21, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
                for _ in range(2)]
    for k, net in enumerate(separate):
        with torch.no_grad():
            for layer, stacked in zip([m for m in net if isinstance(m, nn.Linear)], ensemble.layers):
                layer.weight.copy_(stacked.weight[k].t())
                layer.bias.copy_(stacked.bias[k, 0])
    x = torch.randn(384, 21, requires_grad=True)
    assert ensemble._onednn(x)
    out = ensemble(x)
    expected = torch.stack([net(x) for net in separate])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    expected.sum().backward()
    for k, net in enumerate(separate):
        linears = [m for m in net if isinstance(m, nn.Linear)]
        for layer, stacked in zip(linears, ensemble.layers):
            torch.testing.assert_close(stacked.weight.grad[k].t(), layer.weight.grad, rtol=1e-4, atol=1e-5)
    ensemble.zero_grad(set_to_none=True)
    action = x.detach().requires_grad_(True)
    ensemble(action, frozen=True).sum().backward()  # an actor's loss: reaches the input, not the weights
    assert action.grad is not None and all(p.grad is None for p in ensemble.parameters())


def _layer_by_layer(net: ReLUMLP, monkeypatch) -> None:
    monkeypatch.setattr(net, "_route", lambda x, weights_and_biases: "layers")


def _one_node(out: torch.Tensor, net: nn.Module) -> bool:
    """Whether ``out`` came from the whole network as one autograd node: a ``_OneDNNMLPBackward``
    reading the first layer's weight directly (a last layer routed alone is such a node too)."""
    first = next(m for m in net.modules() if isinstance(m, nn.Linear)).weight
    return type(out.grad_fn).__name__ == "_OneDNNMLPBackward" and any(
        getattr(node, "variable", None) is first for node, _ in out.grad_fn.next_functions)


def _assert_same_gradients(out, expected, net, reference, x, x_reference) -> None:
    """One random output gradient through both: the parameters' (and a recording input's) gradients agree."""
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        assert relative_error(a.grad, b.grad.double()) < 1e-5
    if x.requires_grad:
        assert relative_error(x.grad, x_reference.grad.double()) < 1e-5


@needs_onednn
@pytest.mark.parametrize("relu_last", [False, True])
@pytest.mark.parametrize("input_grad", [False, True])
def test_relu_mlp_as_one_node_equals_the_layers_in_values_and_gradients(relu_last, input_grad, monkeypatch):
    torch.manual_seed(0)
    fused = ReLUMLP(21, 4, [256, 256], activate_last_layer=relu_last)
    layers = copy.deepcopy(fused)
    _layer_by_layer(layers, monkeypatch)
    x = torch.randn(128, 3, 21, requires_grad=input_grad)
    x_layers = x.detach().clone().requires_grad_(input_grad)
    out = fused(x)
    assert _one_node(out, fused), "one autograd node for the whole network"
    expected = layers(x_layers)
    assert not _one_node(expected, layers)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    _assert_same_gradients(out, expected, fused, layers, x, x_layers)


@pytest.mark.parametrize("fused_route", [True, False])
@pytest.mark.parametrize("input_grad", [False, True])
def test_pair_runs_both_inputs_in_one_pass_and_differentiates_the_first_only(fused_route, input_grad, monkeypatch):
    from lightning_marl.nets import AgentMLP

    if fused_route and not onednn_route_enabled():
        pytest.skip("the oneDNN route is off on this machine")
    torch.manual_seed(0)
    net = AgentMLP(17, 9, 3, (256, 256))
    separate = copy.deepcopy(net)
    if not fused_route:
        _layer_by_layer(net.net, monkeypatch)
    x = torch.randn(128, 3, 17, requires_grad=input_grad)
    frozen_input = torch.randn(96, 3, 17)
    live, frozen = net.pair(x, frozen_input)
    assert _one_node(live, net) == fused_route
    assert not frozen.requires_grad and frozen.shape == (96, 3, 9)
    x_separate = x.detach().clone().requires_grad_(input_grad)
    expected = separate(x_separate)
    torch.testing.assert_close(live, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(frozen, separate(frozen_input), rtol=1e-5, atol=1e-5)
    _assert_same_gradients(live, expected, net, separate, x, x_separate)


@needs_onednn
def test_relu_mlp_with_frozen_weights_reaches_the_input_only():
    from lightning_marl.nets.functional import call_with_frozen_params

    torch.manual_seed(0)
    net = ReLUMLP(21, 1, [256, 256])
    x = torch.randn(384, 21, requires_grad=True)
    out = call_with_frozen_params(net, x)
    assert type(out.grad_fn).__name__ == "_OneDNNMLPBackward"
    out.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in net.parameters())
    x64 = x.detach().double().requires_grad_(True)
    h = x64
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        h = F.linear(h, layer.weight.double(), layer.bias.double())
        h = h.relu() if i < len(linears) - 1 else h
    h.sum().backward()
    assert relative_error(x.grad, x64.grad) < 1e-5


@needs_onednn
def test_without_gradients_the_products_run_directly_and_equal_the_layers(monkeypatch):
    import lightning_marl.nets.linear as linear_module

    torch.manual_seed(0)
    net = ReLUMLP(21, 4, [256, 256])
    x = torch.randn(128, 3, 21)
    calls = []
    original = linear_module.mlp_forward
    monkeypatch.setattr(linear_module, "mlp_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        out = net(x)
        layers = copy.deepcopy(net)
        _layer_by_layer(layers, monkeypatch)
        expected = layers(x)
    assert calls == [1] and out.shape == (128, 3, 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_hook_on_a_layer_runs_the_layers_one_by_one_and_fires():
    net = ReLUMLP(21, 1, [256, 256])
    seen = []
    net[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    out = net(torch.randn(384, 21, requires_grad=True))
    assert seen == [torch.Size([384, 256])] and not _one_node(out, net)
    with torch.no_grad():
        net(torch.randn(384, 21))
    assert len(seen) == 2, "the hook also fires without gradients"


@pytest.mark.parametrize("rows, inputs, outputs", [(384, 21, 256), (384, 8, 256), (128, 21, 256), (384, 256, 256),
                                                   (384, 256, 1), (768, 40, 256)])
def test_weight_gradient_in_either_orientation_matches_float64(rows, inputs, outputs):
    from lightning_marl.nets.linear import _weight_gradient

    torch.manual_seed(0)
    grad, flat = torch.randn(rows, outputs), torch.randn(rows, inputs)
    value = _weight_gradient(grad, flat)
    assert value.shape == (outputs, inputs)
    assert relative_error(value, grad.double().t() @ flat.double()) < 1e-5


def test_onednn_matmul_restores_the_setting_and_the_check_rejects_reduced_precision(monkeypatch):
    from lightning_marl.nets import linear as module

    if module.onednn_matmul_precision() is None:
        pytest.skip("this PyTorch has no oneDNN matmul precision setting")
    before = torch.backends.mkldnn.matmul.fp32_precision
    with pytest.raises(RuntimeError), module.onednn_matmul():
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
        raise RuntimeError("inside")
    assert torch.backends.mkldnn.matmul.fp32_precision == before

    real_mm = torch.mm

    def bfloat16_mm(a, b):  # what a CPU with AMX may do under the setting
        return real_mm(a.bfloat16().float(), b.bfloat16().float())

    module.onednn_matmul_keeps_float32.cache_clear()
    monkeypatch.setattr(torch, "mm", bfloat16_mm)
    try:
        assert not module.onednn_matmul_keeps_float32()
    finally:
        monkeypatch.undo()
        module.onednn_matmul_keeps_float32.cache_clear()


@needs_onednn
def test_ensemble_as_one_node_with_fewer_members_gives_the_others_zero_gradients():
    torch.manual_seed(0)
    ensemble = EnsembleMLP(members=2, in_features=21, out_features=1, hidden=(256, 256))
    reference = copy.deepcopy(ensemble)
    x = torch.randn(384, 21)
    out = ensemble(x, members=1)
    assert out.shape == (1, 384, 1)
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "_OneDNNEnsembleBackward"  # under a view
    out.pow(2).sum().backward()
    h = x.double()
    for i, layer in enumerate(reference.layers):  # member 0 by hand, in float64
        h = h @ layer.weight[0].double() + layer.bias[0].double()
        h = h.relu() if i < len(reference.layers) - 1 else h
    h.pow(2).sum().backward()
    for ours, theirs in zip(ensemble.parameters(), reference.parameters()):
        assert relative_error(ours.grad[0], theirs.grad[0]) < 1e-5
        assert not ours.grad[1].any()


@needs_onednn
def test_the_cached_float32_accuracy_check_is_not_fooled_by_a_first_call_under_bf16_autocast():
    from lightning_marl.nets.linear import onednn_matmul_keeps_float32

    onednn_matmul_keeps_float32.cache_clear()
    expected = onednn_matmul_keeps_float32()
    onednn_matmul_keeps_float32.cache_clear()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # e.g. the first step of a bf16-mixed fit
            assert onednn_matmul_keeps_float32() == expected
    finally:
        onednn_matmul_keeps_float32.cache_clear()
