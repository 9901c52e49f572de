"""Ensembles: K networks of the same shape with stacked parameters, run as batched matmuls.

Twin critics and model ensembles evaluate every member in one ``baddbmm`` per layer instead of
one small matmul per member per layer: fewer, larger kernels (measured on the project's CPUs with
one thread: twin 2x256 critics' forward and backward 8-9 % faster in float32 and 9-25 % in bfloat16 than two
separate MLPs). Where ``nets.linear`` sends a layer's float32 CPU products to oneDNN (about twice
MKL's rate on those CPUs, which no batched MKL matmul makes up for), members run one by one through it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_marl.nets.linear import linear, mlp_backward, mlp_forward, transposed_product, uses_onednn


class EnsembleLinear(nn.Module):
    """K independent linear layers in one batched matmul: x [K, B, in] -> [K, B, out].

    Initialised like ``nn.Linear`` (uniform in ±1/sqrt(in_features)), member by member.

    Example:
        >>> layer = EnsembleLinear(members=5, in_features=3, out_features=2)
        >>> layer(torch.zeros(5, 7, 3)).shape
        torch.Size([5, 7, 2])
    """

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def _members(weights, biases, members: int) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Per member j < ``members``: its layers' weights [out, in] and biases [out] as views of the
    stacked ``weights`` [K, in, out] and ``biases`` [K, 1, out] (two views per stacked tensor,
    not one per member and layer)."""
    member_weights = [w.transpose(1, 2).unbind(0) for w in weights]
    member_biases = [b.select(1, 0).unbind(0) for b in biases]
    return [([w[j] for w in member_weights], [b[j] for b in member_biases]) for j in range(members)]


def _stacked_weight_gradient(grad: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """A member's weight gradient as ``EnsembleLinear`` stores it, [in, out]: flat^T grad."""
    return transposed_product(flat, grad)


class _OneDNNEnsemble(torch.autograd.Function):
    """The first ``members`` members of an ``EnsembleMLP``, one after the other through
    ``nets.linear``'s oneDNN route, as ONE autograd node whose gradients are the stacked
    parameters' own: no ``select`` per member and layer, whose backward would fill a zero tensor
    of the whole stack for each member and then add them up.
    Arguments: ``flat [m, in], members, *stacked`` (weight [K, in, out], bias [K, 1, out] per layer)."""

    @staticmethod
    def forward(ctx, flat, members, *stacked):
        weights, biases = stacked[0::2], stacked[1::2]
        outputs, saved = [], []
        for member_weights, member_biases in _members(weights, biases, members):
            activations = mlp_forward(flat, member_weights, member_biases)
            saved.extend(activations[1:])
            outputs.append(activations[-1])
        ctx.save_for_backward(flat, *saved, *weights)
        ctx.members, ctx.layers, ctx.stack = members, len(weights), weights[0].shape[0]
        return torch.stack(outputs)

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        layers, members = ctx.layers, ctx.members
        flat, weights = saved[0], saved[-layers:]
        needs = ctx.needs_input_grad
        grad_flat = None
        weight_grads = [[] for _ in range(layers)]
        bias_grads = [[] for _ in range(layers)]
        member_weights = [w.transpose(1, 2).unbind(0) for w in weights]
        member_grads = grad.unbind(0)
        for j in range(members):
            activations = [flat, *saved[1 + j * layers:1 + (j + 1) * layers]]
            grad_x, w_grads, b_grads = mlp_backward(
                member_grads[j], activations, [w[j] for w in member_weights], False, needs[0], needs[2::2],
                needs[3::2], weight_gradient=_stacked_weight_gradient)
            if grad_x is not None:
                grad_flat = grad_x if grad_flat is None else grad_flat + grad_x
            for i in range(layers):
                weight_grads[i].append(w_grads[i])
                bias_grads[i].append(b_grads[i])
        grads = []
        for i in range(layers):
            grads.append(_stacked(weight_grads[i], ctx.stack) if needs[2 + 2 * i] else None)
            grads.append(_stacked(bias_grads[i], ctx.stack).unsqueeze(1) if needs[3 + 2 * i] else None)  # [K, 1, out]
        return (grad_flat, None, *grads)


def _stacked(parts: list[torch.Tensor], stack: int) -> torch.Tensor:
    """Per-member gradients stacked along a first dimension of ``stack`` (zeros for the members
    that were not run)."""
    value = torch.stack(parts)
    if len(parts) < stack:
        value = torch.cat([value, value.new_zeros(stack - len(parts), *value.shape[1:])])
    return value


class EnsembleMLP(nn.Module):
    """K ReLU MLPs of the same shape with stacked parameters: ``x [..., in] -> [k, ..., out]``.

    Every member sees the same input. ``members=k`` evaluates only the first k members;
    ``frozen=True`` uses detached parameters, so a loss through the output reaches the input
    (an actor's action) but not the weights.

    Example:
        >>> twins = EnsembleMLP(members=2, in_features=3, out_features=1, hidden=(8, 8))
        >>> twins(torch.zeros(5, 4, 3)).shape, twins(torch.zeros(5, 3), members=1).shape
        (torch.Size([2, 5, 4, 1]), torch.Size([1, 5, 1]))
    """

    def __init__(self, members: int, in_features: int, out_features: int, hidden=(256, 256)):
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        sizes = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self._widest = max(range(len(self.layers)), key=lambda i: sizes[i] * sizes[i + 1])

    # Above this many input rows the members run one after the other: a batched product's
    # activations ([k, rows, hidden]) then outgrow the caches, and its skinny last layer (a few
    # outputs) is slower as a batched matmul than as k plain ones. Measured for twin 2x256
    # critics, forward and backward, 2 threads: batched 1.82 / 7.92 / 16.2 / 38.6 ms against one
    # by one 1.93 / 9.19 / 16.2 / 30.4 ms at 384 / 1536 / 3072 / 6144 rows.
    loop_above_rows = 4096

    def forward(self, x: torch.Tensor, members: int | None = None, frozen: bool = False) -> torch.Tensor:
        k = self.members if members is None else members
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        onednn = self._onednn(flat)
        if onednn and torch.is_grad_enabled() and (flat.requires_grad or not frozen):
            stacked = [t for layer in self.layers for t in self._parameters_of(layer, None, frozen)]
            out = _OneDNNEnsemble.apply(flat, k, *stacked)
        elif onednn:  # nothing to differentiate (frozen weights, or no gradients): the members' products directly
            stacked = [t for layer in self.layers for t in (layer.weight, layer.bias)]
            with torch.no_grad():
                out = torch.stack([mlp_forward(flat, w, b)[-1] for w, b in _members(stacked[0::2], stacked[1::2], k)])
        elif flat.shape[0] > self.loop_above_rows:
            out = torch.stack([self._member(flat, j, frozen) for j in range(k)])
        else:
            out = self._batched(flat, k, frozen)
        return out.view(k, *lead, self.out_features)

    def _onednn(self, flat: torch.Tensor) -> bool:
        """Whether a hidden layer's products go to oneDNN (``nets.linear``): then the members run one
        by one, each product about 2x a batched MKL matmul's rate on the project's CPUs."""
        return uses_onednn(flat, self.layers[self._widest].weight[0].t())

    @staticmethod
    def _parameters_of(layer: EnsembleLinear, index, frozen: bool):
        """The layer's weight and bias (``index`` None: all members), detached when ``frozen``."""
        weight, bias = (layer.weight, layer.bias) if index is None else (layer.weight[index], layer.bias[index])
        return (weight.detach(), bias.detach()) if frozen else (weight, bias)

    def _batched(self, flat: torch.Tensor, k: int, frozen: bool) -> torch.Tensor:
        h = flat.unsqueeze(0).expand(k, -1, -1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            weight, bias = self._parameters_of(layer, None if k == self.members else slice(k), frozen)
            h = torch.baddbmm(bias, h, weight)
            if i < last:
                h = h.relu_()  # in place: baddbmm's backward does not need its output
        return h

    def _member(self, flat: torch.Tensor, j: int, frozen: bool) -> torch.Tensor:
        h = flat
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            weight, bias = self._parameters_of(layer, j, frozen)
            h = linear(h, weight.t(), bias[0], relu=i < last)
        return h

    def load_member(self, k: int, linears: list[nn.Linear]) -> None:
        """Copy the weights of a stack of ``nn.Linear`` layers into member ``k`` (tests, conversions)."""
        with torch.no_grad():
            for layer, linear in zip(self.layers, linears, strict=True):
                layer.weight[k].copy_(linear.weight.t())
                layer.bias[k, 0].copy_(linear.bias)
