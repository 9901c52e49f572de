"""Mixed precision: matrix products in bfloat16, everything a loss touches in float32.

Under ``torch.autocast`` (Lightning's ``trainer.precision=bf16-mixed``, CPU or accelerator) the
linear layers inside a network run in bfloat16 — about 4x the float32 matmul rate on CPUs with
AVX512-BF16 — while every network's *output* is cast back to float32, so TD targets, expectile
and CQL terms, log-densities and the losses themselves are computed in float32 (a Q-value of 100
has a resolution of 0.5 in bfloat16; in float32, 1e-5). Parameters and optimiser state stay
float32 throughout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._pytree import tree_map


def _to_float32(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    return value


def _cast_hook(module, inputs, output):
    if torch.is_autocast_enabled(output_device_type(output)):
        return tree_map(_to_float32, output)
    return None


def output_device_type(output) -> str:
    for leaf in (output if isinstance(output, (tuple, list)) else (output,)):
        if isinstance(leaf, torch.Tensor):
            return leaf.device.type
    return "cpu"


def float32_outputs(network: nn.Module):
    """Make ``network`` return float32 tensors when it runs under autocast; a no-op otherwise.

    Example:
        >>> net = float32_outputs(nn.Linear(4, 2))
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     net(torch.zeros(3, 4)).dtype
        torch.float32
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     nn.Linear(4, 2)(torch.zeros(3, 4)).dtype   # an unwrapped layer stays in bfloat16
        torch.bfloat16
    """
    network.register_forward_hook(_cast_hook)
    return network


def forget_cast_weights() -> None:
    """Drop autocast's cached bfloat16 (or float16) copies of the weights.

    Inside one ``torch.autocast`` region PyTorch casts each weight once and reuses that copy until
    the region ends, even after an optimiser has changed the weight in place. Lightning's
    ``bf16-mixed`` wraps a whole training step in one region, so a step that runs a network again
    after an optimiser step (OMSD's ``sequential: exact`` updates one agent after another) would
    compute with the old weights. Call this after every optimiser step; it costs nothing measurable.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     before = layer(torch.ones(1, 2))
        ...     with torch.no_grad():
        ...         _ = layer.weight.add_(1.0)
        ...     stale = layer(torch.ones(1, 2))
        ...     forget_cast_weights()
        ...     fresh = layer(torch.ones(1, 2))
        >>> torch.equal(before, stale), torch.equal(before, fresh)
        (True, False)
    """
    torch.clear_autocast_cache()
