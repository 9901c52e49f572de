"""Networks shared by methods: agent-shared MLPs, actors, mixers."""

from lightning_marl.nets.actors import CategoricalActor, TanhGaussianActor
from lightning_marl.nets.agents import AgentMLP
from lightning_marl.nets.mixers import OMIGAMixer
from lightning_marl.nets.target import polyak_update

__all__ = ["AgentMLP", "CategoricalActor", "OMIGAMixer", "TanhGaussianActor", "polyak_update"]
