"""Calling a network without letting a loss reach its parameters."""

from __future__ import annotations

import torch
from torch import nn


def call_with_frozen_params(module: nn.Module, *args, **kwargs):
    """``module(*args)`` with detached parameters: gradients flow to the inputs, not the weights.

    An actor's loss -Q(s, pi(s)) uses this so that one backward of the sum of losses trains the
    actor through the critic without touching the critic's parameters (the losses then touch
    disjoint parameter sets, as the base class and plain DDP require).

    Example:
        >>> critic = nn.Linear(2, 1)
        >>> action = torch.ones(1, 2, requires_grad=True)
        >>> call_with_frozen_params(critic, action).sum().backward()
        >>> critic.weight.grad is None, action.grad is not None
        (True, True)
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = dict(module.named_buffers())
    return torch.func.functional_call(module, {**params, **buffers}, args, kwargs)
