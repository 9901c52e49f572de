"""A toy third-party plugin: scales the critic's TD target (and counts its calls).

Install it beside lightning_marl and it appears in ``python -m lightning_marl plugins``::

    pip install -e examples/toy_plugin
    python -m lightning_marl plugins
    python -m lightning_marl fit 'plugins=[{name: reward_scale, params: {scale: 0.5}}]'

The entry point in pyproject.toml (group ``lightning_marl.plugins``) names this module;
importing it runs the ``@register`` decorator below.
"""

from dataclasses import dataclass

import torch

from lightning_marl.plugin import Plugin
from lightning_marl.registry import register


@register("plugin", "reward_scale")
class RewardScale(Plugin):
    """Multiplies the critic's TD target by a constant (a toy for the plugin API).

    Example:
        >>> plugin = RewardScale(RewardScale.Params(scale=0.5))
        >>> plugin.critic_target(None, torch.ones(2, 1), module=None)
        tensor([[0.5000],
                [0.5000]])
    """

    @dataclass
    class Params:
        scale: float = 1.0

    def __init__(self, params=None):
        super().__init__(params)
        self.calls = 0

    def critic_target(self, batch, target, module):
        self.calls += 1
        return self.params.scale * target

    def state_dict(self) -> dict:
        return {"calls": torch.tensor(self.calls)}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])
