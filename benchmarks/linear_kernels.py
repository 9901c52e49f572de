"""float32 matrix products in PyTorch's default CPU kernel (MKL's sgemm) against oneDNN's.

For the products a linear layer runs in training (the forward x W^T, the input gradient g W and
the weight gradient g^T x), at the shapes of this project's networks (batch 128 with 3 and 6
agents: 384 and 768 rows; 2x256 hidden layers; a first layer of 20 inputs; a last layer of one
output) and at 2048x2048, this prints the time of each kernel (MKL; oneDNN's linear, which copies
a transposed input first; oneDNN's matmul, which reads it in place, reached through
``nets.linear.onednn_matmul`` where that keeps float32 accuracy), the GFLOP/s, the ratio, what
``lightning_marl.nets.linear`` chooses for that product and whether the
route is on in this process (``onednn_route_enabled``: timed once per process unless
``LIGHTNING_MARL_ONEDNN`` is set). On the project's AMD CPUs (AVX-512) oneDNN runs the large
products about 2x faster; where MKL runs its fast path the two are close.

Run:
    python benchmarks/linear_kernels.py
    python benchmarks/linear_kernels.py --threads 1 --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_floor import calls_per_second  # noqa: E402

from lightning_marl.nets.linear import (  # noqa: E402
    gains_from_onednn,
    onednn_matmul,
    onednn_matmul_available,
    onednn_matmul_keeps_float32,
    onednn_route_enabled,
    transposed_route,
)

# (rows, inner, columns) of x [rows, inner] and W [columns, inner]; the label says which layer.
LAYERS = [
    ("2x256 hidden layer, 3 agents", 384, 256, 256),
    ("2x256 hidden layer, 6 agents", 768, 256, 256),
    ("first layer (17 obs + 3 ids)", 384, 20, 256),
    ("last layer (one value)", 384, 256, 1),
    ("last layer (9 discrete actions), 3 agents", 384, 256, 9),
    ("last layer (9 discrete actions), 6 agents", 768, 256, 9),
    ("2048x2048", 2048, 2048, 2048),
]


def route(name: str, m: int, k: int, n: int) -> str:
    """The kernel ``nets.linear`` takes for this product of a layer."""
    if name.startswith("weight"):  # g^T x: both operands transposed (nets.linear.transposed_product)
        return transposed_route(k, min(m, n), max(m, n))
    return "oneDNN linear" if gains_from_onednn(m, k, n) else "MKL"


def in_onednn_matmul(call):
    """``call`` (a ``torch.mm``) inside ``nets.linear.onednn_matmul``: oneDNN's strided matmul."""
    def run():
        with onednn_matmul():
            return call()
    return run


def products(rows: int, inner: int, columns: int):
    """(name, [m, k, n], MKL call, oneDNN call) for the forward and both gradients of one layer."""
    x, weight, grad = torch.randn(rows, inner), torch.randn(columns, inner), torch.randn(rows, columns)
    linear = torch.ops.mkldnn._linear_pointwise
    return [
        ("forward x W^T", (rows, inner, columns), lambda: x @ weight.t(),
         lambda: linear(x, weight, None, "none", [], "")),
        ("input gradient g W", (rows, columns, inner), lambda: grad @ weight,
         lambda: linear(grad, weight.t(), None, "none", [], "")),
        ("weight gradient g^T x", (columns, rows, inner), lambda: grad.t() @ x,
         lambda: linear(grad.t(), x.t(), None, "none", [], "")),
    ]


def microseconds(call, rounds: int, seconds: float) -> float:
    """Median over rounds of the mean time of one call (each round runs for ``seconds``)."""
    for _ in range(3):
        call()
    return statistics.median(1e6 / calls_per_second(call, seconds, min_calls=3) for _ in range(rounds))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.2, help="per round and product")
    parser.add_argument("--layers", type=int, nargs="*", default=None, help="indices into the layer list")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not onednn_matmul_available():
        print("oneDNN's linear kernel is not available in this PyTorch build: nothing to compare")
        return []
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; oneDNN route in this process: "
          f"{'on' if onednn_route_enabled() else 'off'}; medians of {args.rounds} rounds")
    strided = onednn_matmul_keeps_float32()
    print(f"# oneDNN matmul (torch.mm within nets.linear.onednn_matmul) keeps float32 accuracy here: {strided}"
          + ("" if strided else " (its column is not measured)"))
    print("\n| layer | product | m x k x n | MKL µs | oneDNN linear µs | oneDNN matmul µs | MKL GFLOP/s "
          "| best oneDNN GFLOP/s | oneDNN speed-up | route |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    layers = LAYERS if args.layers is None else [LAYERS[i] for i in args.layers]
    for label, *shape in layers:
        for name, (m, k, n), mkl, onednn in products(*shape):
            mkl_us, onednn_us = microseconds(mkl, args.rounds, args.seconds), microseconds(onednn, args.rounds, args.seconds)
            matmul_us = microseconds(in_onednn_matmul(mkl), args.rounds, args.seconds) if strided else float("nan")
            best = min(onednn_us, matmul_us) if strided else onednn_us
            flops = 2 * m * k * n
            chosen = route(name, m, k, n)
            rows.append({"layer": label, "product": name, "mkl_us": mkl_us, "onednn_us": onednn_us,
                         "matmul_us": matmul_us, "route": chosen})
            print(f"| {label} | {name} | {m} x {k} x {n} | {mkl_us:.1f} | {onednn_us:.1f} | {matmul_us:.1f} "
                  f"| {flops / mkl_us / 1e3:.0f} | {flops / best / 1e3:.0f} | {mkl_us / best:.2f} | {chosen} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
