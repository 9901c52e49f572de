"""Target networks updated by Polyak averaging."""

from __future__ import annotations

import torch


@torch.no_grad()
def polyak_update(target_params: list[torch.Tensor], online_params: list[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) target + tau online, as one fused foreach call."""
    if target_params:
        torch._foreach_lerp_(target_params, online_params, tau)
