"""Linear layers whose large float32 CPU products run in oneDNN instead of MKL.

PyTorch computes a float32 matmul on the CPU with MKL's sgemm. On the project's AMD processors
(full-width AVX-512) MKL takes a slower code path: a 2048x2048 product reaches about 210 GFLOP/s
on 2 threads, while oneDNN, which PyTorch ships (it runs bfloat16 products, and inductor's
fused linear layers), reaches about 450 on the same threads. On a 2x256 network's products at batch 128 and 3 agents
(``benchmarks/linear_kernels.py``, µs, MKL / oneDNN): forward 240 / 134, input gradient 239 / 113,
weight gradient 254 / 219 (oneDNN copies the transposed gradient to a contiguous buffer first). Same float32 arithmetic, a different accumulation order (results agree to
float32 rounding).

``linear(x, weight, bias)`` is ``F.linear`` with that routing, differentiable: each of its three
products (the output, and in the backward the input's and the weight's gradients) goes to
oneDNN when it is large enough to gain, to MKL otherwise (oneDNN has a fixed cost of ~10 µs per
call and is slower for products with a skinny output). bfloat16 autocast, accelerators,
``torch.compile`` and ``LIGHTNING_MARL_ONEDNN=0`` take plain ``F.linear``, and so does a CPU where
oneDNN is not at least 10 % faster on a typical layer (``onednn_is_faster_here``, timed once per
process; ``LIGHTNING_MARL_ONEDNN=1`` skips the timing and always routes). ``Linear`` is
``nn.Linear`` (same parameters and state dict) calling it.

``relu_mlp`` (what ``ReLUMLP`` runs while gradients are recorded) computes a whole ReLU MLP as
one autograd node with a hand-written backward. Weight gradients, whose operands are both
transposed, run in oneDNN's matmul (``transposed_product``), which reads them in place, where
that keeps float32 accuracy on this CPU (``onednn_matmul_keeps_float32``).
"""

from __future__ import annotations

import functools
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes
from torchrl.modules import MLP

_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


@functools.cache
def onednn_matmul_available() -> bool:
    """Whether oneDNN's linear kernel exists and runs in this PyTorch build."""
    if _ONEDNN_LINEAR is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        out = _ONEDNN_LINEAR(torch.ones(2, 3), torch.ones(4, 3), None, "none", [], "")
    except RuntimeError:
        return False
    return out.shape == (2, 4) and bool((out == 3).all())


def _best_time(product, calls: int = 10, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            product()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def onednn_is_faster_here() -> bool:
    """Whether oneDNN beats PyTorch's default float32 kernel by at least 10 % on this CPU, timed
    once per process (~20 ms) on a typical hidden layer: [384, 256] x [256, 256].

    On AMD processors with AVX-512 (the project's machines) oneDNN is about 2x faster; where MKL
    takes its fast path (Intel processors) the two are close and PyTorch's default is kept."""
    # Outside any dispatch mode (an operation counter, a FLOP counter) and any autocast region that
    # the first call may be under (bf16 autocast would time bfloat16 products).
    with _disable_current_modes(), torch.no_grad(), torch.autocast("cpu", enabled=False):
        generator = torch.Generator().manual_seed(0)
        x, weight = torch.randn(384, 256, generator=generator), torch.randn(256, 256, generator=generator)
        _ONEDNN_LINEAR(x, weight, None, "none", [], "")  # the first call creates oneDNN's primitive
        default = _best_time(lambda: torch.mm(x, weight.t()))
        onednn = _best_time(lambda: _ONEDNN_LINEAR(x, weight, None, "none", [], ""))
    return onednn < 0.9 * default


def onednn_route_enabled() -> bool:
    """``LIGHTNING_MARL_ONEDNN``: ``0`` off, ``1`` on (where the kernel exists), unset or ``auto``:
    on where ``onednn_is_faster_here()``."""
    setting = os.environ.get("LIGHTNING_MARL_ONEDNN", "auto")
    if setting == "0" or not onednn_matmul_available():
        return False
    return setting == "1" or onednn_is_faster_here()


def gains_from_onednn(rows: int, inner: int, columns: int) -> bool:
    """Whether the product [rows, inner] x [inner, columns] runs faster in oneDNN than in MKL.

    Measured on the project's CPUs (2 threads, µs, MKL / oneDNN): at least 2x faster for 2x256
    layers at 384 rows; about equal at 384 x 20 x 256; for a skinny output from 256 inputs, 9
    columns: 22 / 20 at 384 rows, 42 / 27 at 768, 81 / 44 at 1536; 21 columns: 42 / 26 at 384 rows
    (``benchmarks/linear_kernels.py``). Slower below ~1M multiply-adds (oneDNN's ~13 µs per call;
    ~0.75M from 64 inputs on: MKL is quickest on short inner products) and for outputs with fewer
    than 8 rows or columns (a value head: 11 / 18 at 768 rows).
    """
    work = rows * inner * columns
    return rows >= 64 and columns >= 8 and inner >= 16 and (work >= 1 << 20 or (inner >= 64 and work >= 3 << 18))


def _forward(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """relu?(flat [m, k] @ weight.T + bias), ``weight`` [n, k] (any strides), in oneDNN where it gains."""
    if gains_from_onednn(flat.shape[0], weight.shape[1], weight.shape[0]):
        return _ONEDNN_LINEAR(flat, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(flat, weight, bias)
    return out.relu_() if relu else out


def onednn_matmul_precision():
    """``torch.backends.mkldnn.matmul.fp32_precision`` (None where this PyTorch lacks the setting)."""
    return getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", None)


class onednn_matmul:
    """Within it, PyTorch's float32 ``torch.mm`` on the CPU runs in oneDNN's matmul, which reads
    transposed operands in place (``_linear_pointwise`` first copies a transposed input).

    PyTorch reaches that matmul only when ``torch.backends.mkldnn.matmul.fp32_precision`` allows
    oneDNN a reduced internal precision ("bf16"). On CPUs without AMX (the project's AMD
    processors) oneDNN still computes in float32: ``onednn_matmul_keeps_float32`` checks this once
    per process against float64, and the weight gradients use the context only where it holds.
    The previous setting is restored on exit."""

    def __enter__(self):
        self._previous = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"

    def __exit__(self, *exc):
        torch.backends.mkldnn.matmul.fp32_precision = self._previous


@functools.cache
def onednn_matmul_keeps_float32() -> bool:
    """Whether ``torch.mm`` inside ``onednn_matmul`` keeps float32 accuracy on this CPU (checked once
    per process against float64 on inputs where bfloat16 rounding would show: relative error under
    4e-6; measured on these inputs: oneDNN's matmul 1.1-1.3e-6, MKL 5.9-6.8e-7, bfloat16-rounded
    inputs 4.2-5.5e-4)."""
    if onednn_matmul_precision() is None or not onednn_matmul_available():
        return False
    # Not under autocast either: a first call inside bf16 autocast (the first step of a bf16-mixed
    # fit) would check bfloat16 products, fail, and keep weight gradients off this route all run.
    with _disable_current_modes(), torch.no_grad(), torch.autocast("cpu", enabled=False):
        generator = torch.Generator().manual_seed(0)
        for m, p, q in ((384, 256, 256), (384, 21, 256)):
            a = 1.0 + 1e-3 * torch.randn(m, p, generator=generator)
            b = 1.0 + 1e-3 * torch.randn(m, q, generator=generator)
            with onednn_matmul():
                value = torch.mm(a.t(), b)
            reference = a.double().t() @ b.double()
            if float((value.double() - reference).abs().max() / reference.abs().max()) > 4e-6:
                return False
    return True


def transposed_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [m, p]^T @ b [m, q] -> [p, q] (maybe a transposed view): a layer's weight gradient.

    Both operands are transposed. Where ``onednn_matmul_keeps_float32``, the product runs in
    oneDNN's matmul, which reads them in place (2 threads, µs, m 384 / 768 / 1536, p = q = 256:
    126 / 241 / 463, against 168 / 310 / 842 for ``_linear_pointwise``, whose transposed-input
    copy is the difference, and 260 / 522 / 1056 for MKL). Otherwise oneDNN's linear copies the
    operand it reads as rows to contiguous memory, so the product is taken in the orientation that
    copies the smaller one: m 384 / 768, p 21, q 256, MKL as b^T a then transposed 58 / 105, MKL as
    a^T b 46 / 69, oneDNN as a^T b 36 / 60. Skinny products (a dimension under 8) stay in MKL.
    """
    m, p, q = a.shape[0], a.shape[1], b.shape[1]
    if p > q:
        return transposed_product(b, a).t()
    route = transposed_route(m, p, q)
    if route == "oneDNN matmul":
        with onednn_matmul():
            return torch.mm(a.t(), b)
    if route == "oneDNN linear":
        return _ONEDNN_LINEAR(a.t(), b.t(), None, "none", [], "")
    return torch.mm(a.t(), b)


def transposed_route(m: int, p: int, q: int) -> str:
    """The kernel ``transposed_product`` takes for a [m, p]^T b [m, q] with p <= q: "oneDNN matmul",
    "oneDNN linear" (which copies a^T first) or "MKL"."""
    if p >= 8 and m * p * q >= 1 << 19 and onednn_matmul_keeps_float32():
        return "oneDNN matmul"
    if gains_from_onednn(p, m, q) or (m >= 384 and q >= 256 and p >= 16):
        return "oneDNN linear"
    return "MKL"


def _weight_gradient(grad: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """A layer's weight gradient as ``nn.Linear`` holds it: grad [m, out]^T flat [m, in] -> [out, in]."""
    return transposed_product(grad, flat)


def _input_gradient(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad [m, n] @ weight [n, k]; a broadcast product when n is 1 (MKL's outer product is slower)."""
    if weight.shape[0] == 1:
        return grad * weight
    return _forward(grad, weight.t())


def mlp_forward(flat: torch.Tensor, weights, biases, relu_last: bool = False) -> list[torch.Tensor]:
    """The activations [flat, h1, ..., out] of a ReLU MLP on ``flat`` [m, in], each layer's product
    routed as ``_forward`` routes it and each ReLU fused into it (weights [out, in], any strides)."""
    last = len(weights) - 1
    activations = [flat]
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        activations.append(_forward(activations[-1], weight, bias, relu=i < last or relu_last))
    return activations


def mlp_backward(grad: torch.Tensor, activations, weights, relu_last: bool, input_grad: bool, weight_grads,
                 bias_grads, weight_gradient=None):
    """The gradients of ``mlp_forward``'s output ``grad`` [m, out] with respect to its input (or None)
    and, where ``weight_grads[i]`` / ``bias_grads[i]`` ask, layer i's weight and bias (else None).
    ``weight_gradient(g, a)`` gives a weight's gradient from the layer's output gradient and input
    (default ``_weight_gradient``: [out, in], as ``nn.Linear`` holds it)."""
    weight_gradient = weight_gradient or _weight_gradient
    layers = len(weights)
    weight_out, bias_out = [None] * layers, [None] * layers
    g = grad
    for i in reversed(range(layers)):
        if i < layers - 1 or relu_last:
            g = torch.ops.aten.threshold_backward(g, activations[i + 1], 0)
        if weight_grads[i]:
            weight_out[i] = weight_gradient(g, activations[i])
        if bias_grads[i]:
            bias_out[i] = g.sum(0)
        if i > 0 or input_grad:
            g = _input_gradient(g, weights[i])
    return (g if input_grad else None), weight_out, bias_out


class _OneDNNMLP(torch.autograd.Function):
    """A whole ReLU MLP as one autograd node: relu(... relu(x W0^T + b0) ...) W_L^T + b_L, each
    product routed as ``_forward`` routes it, each hidden ReLU fused into its product.

    One node instead of one per layer (plus the reshapes and the last layer's addmm) saves the
    autograd engine's and the Python function's per-node costs, and the backward of a layer with
    one output (a value head) is a broadcast product instead of MKL's outer product.
    Arguments: ``x, relu_last, frozen_from, *weights_and_biases`` (alternating; a bias may be None).
    ``frozen_from`` None: one output. An int r: the network runs once over all of x's rows and
    returns two outputs, the rows before index r of dimension 0 (differentiated) and the rows from
    r on (not differentiated: nothing of theirs is kept for the backward). ``linear`` runs a
    single layer through it."""

    @staticmethod
    def forward(ctx, x, relu_last, frozen_from, *parameters):
        weights, biases = parameters[0::2], parameters[1::2]
        activations = mlp_forward(x.reshape(-1, x.shape[-1]), weights, biases, relu_last)
        out = activations[-1].view(*x.shape[:-1], -1)
        ctx.relu_last, ctx.input_shape = relu_last, x.shape
        if frozen_from is None:
            ctx.save_for_backward(*activations, *weights)
            return out
        rows = frozen_from * math.prod(x.shape[1:-1])  # flattened rows before frozen_from
        ctx.save_for_backward(*(a[:rows] for a in activations), *weights)
        ctx.input_shape, ctx.frozen_shape = (frozen_from, *x.shape[1:]), (x.shape[0] - frozen_from, *x.shape[1:])
        live, frozen = out[:frozen_from], out[frozen_from:]
        ctx.mark_non_differentiable(frozen)
        ctx.set_materialize_grads(False)  # the frozen output's gradient is never used: no zeros made for it
        return live, frozen

    @staticmethod
    def backward(ctx, grad, *frozen_grad):
        if grad is None:  # only with frozen rows (gradients not materialised): the live output went unused
            return (None,) * (len(ctx.needs_input_grad))
        saved = ctx.saved_tensors
        layers = (len(saved) - 1) // 2
        activations, weights = saved[:layers + 1], saved[layers + 1:]
        needs = ctx.needs_input_grad
        grad_x, weight_grads, bias_grads = mlp_backward(
            grad.reshape(-1, grad.shape[-1]), activations, weights, ctx.relu_last, needs[0], needs[3::2], needs[4::2])
        grads = [t for pair in zip(weight_grads, bias_grads) for t in pair]
        if grad_x is not None and len(frozen_grad):  # x's frozen rows get no gradient
            grad_x = torch.cat([grad_x.view(ctx.input_shape), grad_x.new_zeros(ctx.frozen_shape)])
        elif grad_x is not None:
            grad_x = grad_x.view(ctx.input_shape)
        return (grad_x, None, None, *grads)


def relu_mlp(x: torch.Tensor, weights_and_biases, relu_last: bool = False) -> torch.Tensor:
    """An MLP with ReLU between its layers, ``weights_and_biases = [W0, b0, W1, b1, ...]`` as
    ``nn.Linear`` holds them (W [out, in], any strides), computed as ONE autograd node whose
    products take the oneDNN route as ``linear``'s do (callers check ``uses_onednn`` first).

    Example:
        >>> layers = [nn.Linear(4, 8), nn.Linear(8, 2)]
        >>> parameters = [t for layer in layers for t in (layer.weight, layer.bias)]
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(relu_mlp(x, parameters), layers[1](layers[0](x).relu()), atol=1e-6)
        True
    """
    return _OneDNNMLP.apply(x, relu_last, None, *weights_and_biases)


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``linear(x, weight)`` takes the oneDNN route (float32 CPU, no autocast, large enough)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or not onednn_route_enabled():
        return False
    rows, (columns, inner) = x.numel() // max(x.shape[-1], 1), weight.shape
    return gains_from_onednn(rows, inner, columns) or gains_from_onednn(rows, columns, inner)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then a ReLU with ``relu=True``), its large float32 CPU
    products in oneDNN, the ReLU fused into the product (see the module).

    Example:
        >>> x, w, b = torch.randn(384, 256), torch.randn(128, 256), torch.randn(128)
        >>> torch.allclose(linear(x, w, b), F.linear(x, w, b), atol=1e-4)
        True
    """
    if uses_onednn(x, weight):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _OneDNNMLP.apply(x, relu, None, weight, bias)  # a one-layer MLP
        # Nothing to differentiate (target networks, evaluation): no autograd.Function overhead.
        return _forward(x.reshape(-1, x.shape[-1]), weight, bias, relu).view(*x.shape[:-1], weight.shape[0])
    out = F.linear(x, weight, bias)
    return torch.relu(out) if relu else out


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, initialisation and state dict) whose large float32 CPU
    products run in oneDNN: about 2x MKL's rate on the project's AMD CPUs. ``layer(x, relu=True)``
    also applies a ReLU, fused into the product.

    Example:
        >>> layer = Linear(256, 64)
        >>> x = torch.randn(128, 3, 256)
        >>> torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5)
        True
    """

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        return linear(x, self.weight, self.bias, relu)


class ReLUMLP(MLP):
    """torchrl's ``MLP`` with ReLU activations (same layers, same state dict) whose large float32
    CPU products run in oneDNN, each hidden ReLU fused into the product before it. While gradients
    are recorded the whole network is one autograd node (``relu_mlp``); without them its products
    run directly (``mlp_forward``). Off that route, and whenever a Linear layer carries a forward
    hook, each layer runs as its own module call (hooks fire). The ``nn.ReLU`` modules stay
    (printing, torchrl's layout) but are not called: hooks on them do not fire. ``pair`` runs two
    inputs in one pass, differentiating the first only.

    Example:
        >>> net = ReLUMLP(in_features=4, out_features=2, num_cells=[8, 8])
        >>> [type(m).__name__ for m in net]
        ['Linear', 'ReLU', 'Linear', 'ReLU', 'Linear']
        >>> net(torch.zeros(5, 4)).shape
        torch.Size([5, 2])
    """

    def __init__(self, in_features: int, out_features: int, num_cells, activate_last_layer: bool = False):
        super().__init__(in_features=in_features, out_features=out_features, num_cells=list(num_cells),
                         activation_class=nn.ReLU, activate_last_layer=activate_last_layer, layer_class=Linear)
        modules = list(self)
        self._plan = tuple((i, i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU))
                           for i, m in enumerate(modules) if isinstance(m, nn.Linear))
        # Plain references (not registered twice; deepcopy maps them to the copies): indexing an
        # nn.Sequential on every call costs more than the checks themselves.
        self._linears = [modules[i] for i, _ in self._plan]
        self._widest = max(range(len(self._linears)), key=lambda i: self._linears[i].weight.numel())

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(inputs, -1) if len(inputs) > 1 else inputs[0]
        weights_and_biases = self._weights_and_biases()
        route = self._route(x, weights_and_biases)
        if route == "node":
            return relu_mlp(x, weights_and_biases, relu_last=self._plan[-1][1])
        if route == "direct":  # nothing to differentiate: the same products without per-layer reshapes
            out = mlp_forward(x.reshape(-1, x.shape[-1]), weights_and_biases[0::2], weights_and_biases[1::2],
                              self._plan[-1][1])[-1]
            return out.view(*x.shape[:-1], out.shape[-1])
        for index, relu in self._plan:
            x = self[index](x, relu)  # a module call, so hooks on the layers still fire
        return x

    def pair(self, x: torch.Tensor, frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(x), self(frozen))``, the second computed without gradients (a TD target's next
        observation beside the loss's current one). On the fused route both go through the
        network as one pass over their rows (one product per layer instead of two); only ``x``'s
        rows are kept for the backward. ``x`` and ``frozen`` differ at most in dimension 0."""
        weights_and_biases = self._weights_and_biases()
        if x.shape[1:] == frozen.shape[1:] and self._route(x, weights_and_biases) == "node":
            return _OneDNNMLP.apply(torch.cat([x, frozen]), self._plan[-1][1], x.shape[0], *weights_and_biases)
        return self._separate_pair(x, frozen)

    def joint_pair(self, joint: torch.Tensor, frozen_from: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``pair`` of ``joint[:frozen_from]`` and ``joint[frozen_from:]`` (already concatenated)."""
        weights_and_biases = self._weights_and_biases()
        if self._route(joint, weights_and_biases) == "node":
            return _OneDNNMLP.apply(joint, self._plan[-1][1], frozen_from, *weights_and_biases)
        return self._separate_pair(joint[:frozen_from], joint[frozen_from:])

    def _separate_pair(self, x: torch.Tensor, frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        live = self(x)
        with torch.no_grad():
            return live, self(frozen)

    def _weights_and_biases(self) -> list[torch.Tensor]:
        # Read from each layer's parameter dict: nn.Module's attribute lookup costs ~0.5 µs a name.
        return [layer._parameters[name] for layer in self._linears for name in ("weight", "bias")]

    def _route(self, x: torch.Tensor, weights_and_biases: list) -> str:
        """How a call on ``x`` runs: "node", the whole network as one autograd node (``_OneDNNMLP``),
        while gradients are recorded; "direct", its products without autograd (``mlp_forward``),
        when nothing is differentiated; "layers", each layer as its own module call, off the
        oneDNN route or when a layer carries a hook to honour. ``weights_and_biases``: the call's
        ``_weights_and_biases()``."""
        if not uses_onednn(x, weights_and_biases[2 * self._widest]) or any(
                layer._forward_hooks or layer._forward_pre_hooks for layer in self._linears):
            return "layers"
        records = torch.is_grad_enabled() and (x.requires_grad or any(
            t is not None and t.requires_grad for t in weights_and_biases))
        return "node" if records else "direct"
