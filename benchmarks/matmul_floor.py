"""The matmul floor of a training step: its matrix products alone, replayed back to back.

``record_matmuls(step, item)`` runs one step under a ``TorchDispatchMode`` and records every
matrix product the step dispatches (forward and backward, with the shapes, strides and dtypes
they ran with, so autocast's bfloat16 products are recorded as bfloat16). ``MatmulReplay``
re-runs exactly those products on random tensors of the same layout, with nothing in between:
no element-wise work, no autograd, no optimiser, no Python beyond one call per product.

Its steps/s is an upper bound for ANY implementation that does the same matrix products at
the same precision on these threads: ``floor steps/s / plain steps/s`` is the largest speed-up
over a plain loop that removing all other overhead could buy. The throughput benchmarks print
it beside the measured ratio, so a goal like "1.5x the plain loop" can be checked against what
the arithmetic allows.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(8, 4)
    >>> products = record_matmuls(lambda x: net(x).sum().backward(), torch.randn(16, 8))
    >>> [name for name, _ in products]
    ['aten.addmm.default', 'aten.mm.default']
    >>> MatmulReplay(products).steps_per_second(0.05) > 0
    True
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_marl.nets.linear import onednn_matmul_precision

MATMULS = {
    torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default, torch.ops.aten.mv.default, torch.ops.aten.addmv.default,
}
# oneDNN's linear (lightning_marl.nets.linear routes large float32 CPU products there).
ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
if ONEDNN_LINEAR is not None:
    MATMULS.add(ONEDNN_LINEAR.default)

    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(ONEDNN_LINEAR)
    def _onednn_linear_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        """x [..., k] W^T with W [n, k]: 2·rows·k·n (the fused bias and activation not counted, as for addmm)."""
        rows = 1
        for size in input_shape[:-1]:
            rows *= size
        return 2 * rows * input_shape[-1] * weight_shape[0]


def _layout(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), tuple(value.stride()), value.dtype)
    return ("value", value)


VIEWS = {"aten.view.default", "aten.t.default", "aten.detach.default", "aten.expand.default",
         "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.default", "aten.transpose.int",
         "aten.as_strided.default", "aten._unsafe_view.default", "aten.permute.default", "aten.alias.default",
         "aten.slice.Tensor", "aten.select.int", "aten.split.Tensor", "aten.unbind.int", "aten.lift_fresh.default",
         "aten._reshape_alias.default"}


class _Recorder(TorchDispatchMode):
    """Every operation's name, and the matrix products with their argument layouts."""

    def __init__(self):
        super().__init__()
        self.names, self.products = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.names.append(str(func))
        if func in MATMULS:
            # with oneDNN's float32 matmul setting (nets.linear.onednn_matmul changes it around weight
            # gradients), restored on replay
            self.products.append((str(func), (func, [_layout(a) for a in args],
                                              {k: _layout(v) for k, v in kwargs.items()}, onednn_matmul_precision())))
        return func(*args, **kwargs)


def _record(step, item) -> _Recorder:
    recorder = _Recorder()
    with recorder:
        step(item)
    return recorder


def record_matmuls(step, item) -> list:
    """The matrix products of ``step(item)``: [(op name, (op, argument layouts, keyword layouts))]."""
    return _record(step, item).products


def count_operations(step, item) -> tuple[int, int]:
    """(operations, of which compute) that ``step(item)`` dispatches. Compute operations are those
    that are not views or detaches: on an accelerator, each one launches at least one kernel.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(8, 4)
        >>> count_operations(lambda x: net(x).sum().backward(), torch.randn(16, 8))[1] > 0
        True
    """
    names = _record(step, item).names
    return len(names), sum(name not in VIEWS for name in names)


def _materialise(layout):
    if layout[0] == "value":
        return layout[1]
    _, shape, stride, dtype = layout
    extent = 1 + sum((size - 1) * step for size, step in zip(shape, stride)) if all(shape) else 0
    storage = torch.randn(max(extent, 1), dtype=torch.float32).to(dtype)
    return storage.as_strided(shape, stride)


class MatmulReplay:
    """Replays recorded products on random tensors of the same shapes, strides and dtypes."""

    def __init__(self, products: list):
        self.calls = [(func, [_materialise(a) for a in args], {k: _materialise(v) for k, v in kwargs.items()},
                       precision) for _, (func, args, kwargs, precision) in products]

    def flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.run_once()
        return counter.get_total_flops()

    def run_once(self) -> None:
        initial = current = onednn_matmul_precision()
        for func, args, kwargs, precision in self.calls:
            if precision != current:
                torch.backends.mkldnn.matmul.fp32_precision = current = precision
            func(*args, **kwargs)
        if current != initial:
            torch.backends.mkldnn.matmul.fp32_precision = initial

    def steps_per_second(self, seconds: float) -> float:
        """Replays per second (one replay = one training step's products)."""
        self.run_once()
        return calls_per_second(self.run_once, seconds)


def calls_per_second(call, seconds: float, min_calls: int = 1) -> float:
    """How many times per second ``call()`` runs, calling it for ``seconds`` (and ``min_calls`` times at least)."""
    count, start = 0, time.perf_counter()
    while True:
        call()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= min_calls:
            return count / elapsed
