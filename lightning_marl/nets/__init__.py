"""Networks shared by methods: agent-shared MLPs, actors, mixers."""

from lightning_marl.nets.actors import CategoricalActor, TanhGaussianActor
from lightning_marl.nets.agents import AgentMLP
from lightning_marl.nets.functional import call_with_frozen_params
from lightning_marl.nets.mixers import OMIGAMixer
from lightning_marl.nets.target import polyak_update

__all__ = ["AgentMLP", "call_with_frozen_params", "CategoricalActor", "OMIGAMixer", "TanhGaussianActor", "polyak_update"]
