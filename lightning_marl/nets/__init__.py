"""Networks shared by methods: agent-shared MLPs, actors, critics, mixers."""

from lightning_marl.nets.actors import CategoricalActor, TanhGaussianActor, stochastic_actor
from lightning_marl.nets.agents import AgentMLP
from lightning_marl.nets.critics import AgentQ, CentralQ, StateValue, central_critics, expectile_loss
from lightning_marl.nets.deterministic import DeterministicActor
from lightning_marl.nets.functional import call_with_frozen_params
from lightning_marl.nets.linear import Linear, ReLUMLP
from lightning_marl.nets.mixers import OMIGAMixer
from lightning_marl.nets.optim import ClippedAdam
from lightning_marl.nets.qmix import QMIXMixer
from lightning_marl.nets.sampling import tanh_gaussian_rsample
from lightning_marl.nets.target import polyak_update

__all__ = [
    "AgentMLP", "AgentQ", "CategoricalActor", "CentralQ", "ClippedAdam", "DeterministicActor", "Linear",
    "OMIGAMixer", "QMIXMixer", "ReLUMLP", "StateValue", "TanhGaussianActor", "call_with_frozen_params",
    "central_critics", "expectile_loss", "polyak_update", "stochastic_actor", "tanh_gaussian_rsample",
]
