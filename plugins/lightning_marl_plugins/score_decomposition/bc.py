"""The plain behaviour-cloning regulariser: the direction a_D - a toward the dataset's actions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lightning_marl.data import schema
from lightning_marl.plugin import Plugin
from lightning_marl.registry import register
from lightning_marl_plugins.score_decomposition.common import resolve_beta


@register("plugin", "bc_regulariser")
class BCRegulariser(Plugin):
    """Plain BC regulariser for ``omsd``: score = a_D - a, weighted by 1/beta in the actor update.

    ``beta`` unset takes the per-dataset default (0.001 expert, 0.3 random, 0.01 otherwise).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> batch = TensorDict({("agents", "action"): torch.ones(4, 2, 1)}, [4])
        >>> BCRegulariser().actor_regulariser(batch, torch.zeros(4, 2, 1), module=None)[0, :, 0]
        tensor([1., 1.])
    """

    @dataclass
    class Params:
        beta: Optional[float] = None  # inverse regularisation weight; None: from the dataset's quality label

    def __init__(self, params=None):
        super().__init__(params)
        self.beta = resolve_beta(self.params.beta, None)

    def setup(self, module, datamodule) -> None:
        self.beta = resolve_beta(self.params.beta, datamodule)

    def actor_regulariser(self, batch, actions, module, agent=None):
        return batch.get(schema.ACTION).to(actions.dtype) - actions.detach()

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state.get("beta", self.beta))
