"""Offline MARL methods, one file each, registered under the kind "algorithm"."""

from lightning_marl.algorithms import bc, omiga  # noqa: F401  (registration)
from lightning_marl.algorithms.base import OfflineMARLModule

__all__ = ["OfflineMARLModule"]
