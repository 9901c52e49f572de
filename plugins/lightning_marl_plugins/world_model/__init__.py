"""World-model augmentation plugins: LOGO (``logo``) and the MOPO-style ensemble baseline (``mopo_ensemble``).

Importing this package registers both (the entry point ``world_model`` does it at discovery).
Switch between them in a config: ``plugins: [{name: logo}]`` or ``[{name: mopo_ensemble}]``.
"""

from lightning_marl_plugins.world_model.base import WorldModelAugmentation, WorldModelParams
from lightning_marl_plugins.world_model.buffer import SyntheticBuffer, uncertainty_weights
from lightning_marl_plugins.world_model.logo import LOGO, LOGOParams
from lightning_marl_plugins.world_model.mopo import MOPOEnsemble, MOPOParams

__all__ = ["LOGO", "LOGOParams", "MOPOEnsemble", "MOPOParams", "SyntheticBuffer", "WorldModelAugmentation",
           "WorldModelParams", "uncertainty_weights"]
