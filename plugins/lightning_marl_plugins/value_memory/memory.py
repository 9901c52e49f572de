"""Offline value memory (OVM): keep the pre-trained Q_tot in the TD target while fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_marl.errors import PluginError
from lightning_marl.plugin import Plugin
from lightning_marl.registry import register


def linear_schedule(start: float, end: float, steps: int, t: int) -> float:
    """``start`` moved linearly to ``end`` over ``steps`` (then held at ``end``).

    Example:
        >>> linear_schedule(1.0, 0.0, 100, 25), linear_schedule(0.2, 0.05, 10, 99)
        (0.75, 0.05)
    """
    if steps <= 0 or t >= steps:
        return end
    return start + (end - start) * max(t, 0) / steps


def blend_targets(target: torch.Tensor, memory: torch.Tensor, weight: float) -> torch.Tensor:
    """y_mix = (1 - lambda) y + lambda max(Q_tot^off, y): ``target`` y and ``memory`` Q_tot^off [B, 1].

    Example:
        >>> blend_targets(torch.tensor([[1.0], [4.0]]), torch.tensor([[3.0], [2.0]]), 0.5)
        tensor([[2.],
                [4.]])
    """
    return (1.0 - weight) * target + weight * torch.maximum(memory, target)


@register("plugin", "value_memory")
class OfflineValueMemory(Plugin):
    """Offline value memory (OVMSE): a frozen copy Q_tot^off of the pre-trained agent networks and
    mixer, taken when training starts; the critic's target becomes
    (1 - lambda_t) y + lambda_t max(Q_tot^off(s, a), y), lambda_t annealed linearly from ``start``
    to 0 over ``anneal_env_steps`` environment steps (``module.env_steps``).

    Needs a value-decomposition method with ``frozen_copy()`` and ``q_tot(batch, agent_net,
    mixer)`` (QMIX-CQL). The frozen copy is saved with checkpoints, so a resumed run keeps the
    offline values, not the fine-tuned ones.

    Example:
        >>> memory = OfflineValueMemory(OfflineValueMemory.Params(anneal_env_steps=100))
        >>> memory.weight(0), memory.weight(50), memory.weight(1000)
        (1.0, 0.5, 0.0)
    """

    @dataclass
    class Params:
        anneal_env_steps: int = 500_000  # [choice] lambda goes 1 -> 0 over this many env steps
        start: float = 1.0  # lambda at env step 0

    def __init__(self, params=None):
        super().__init__(params)
        self.agent_net = None
        self.mixer = None
        self._pending: dict | None = None

    def weight(self, env_steps: int) -> float:
        """lambda_t at ``env_steps`` environment steps."""
        return linear_schedule(self.params.start, 0.0, self.params.anneal_env_steps, env_steps)

    def setup(self, module, datamodule) -> None:
        for needed in ("frozen_copy", "q_tot"):
            if not hasattr(module, needed):
                raise PluginError(
                    f"value_memory needs a value-decomposition method with {needed}() (e.g. qmix_cql); "
                    f"{type(module).__name__} has none: remove the plugin or use qmix_cql"
                )
        if self.agent_net is not None:
            return
        self.agent_net, self.mixer = module.frozen_copy()  # the weights training starts from
        if self._pending is not None:  # a resumed run: the memory of the original offline weights
            self.agent_net.load_state_dict(self._pending["agent_net"])
            self.mixer.load_state_dict(self._pending["mixer"])
            self._pending = None

    @torch.no_grad()
    def memory_value(self, batch, module) -> torch.Tensor:
        """Q_tot^off(s, a) [B, 1] at the batch's joint action."""
        return module.q_tot(batch, self.agent_net, self.mixer)

    @torch.no_grad()
    def critic_target(self, batch, target, module):
        if self.agent_net is None:
            self.setup(module, None)
        return blend_targets(target, self.memory_value(batch, module), self.weight(module.env_steps))

    def state_dict(self) -> dict:
        if self.agent_net is None:
            return dict(self._pending or {})
        return {
            "agent_net": {k: v.detach().cpu() for k, v in self.agent_net.state_dict().items()},
            "mixer": {k: v.detach().cpu() for k, v in self.mixer.state_dict().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.agent_net is None:
            self._pending = state
        else:
            self.agent_net.load_state_dict(state["agent_net"])
            self.mixer.load_state_dict(state["mixer"])
