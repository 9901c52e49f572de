"""Offline MARL methods, one file each, registered under the kind "algorithm".

Every module of this package is imported here, so adding a method is adding a file with an
``@register("algorithm", NAME)`` class: nothing in the core needs editing.
"""

import importlib
import pkgutil

from lightning_marl.algorithms.base import OfflineMARLModule

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OfflineMARLModule"]
