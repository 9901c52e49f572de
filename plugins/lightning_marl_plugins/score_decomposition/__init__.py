"""OMSD's behaviour-score plugins: sequential (or independent) diffusion scores, and plain BC.

Importing this package registers two plugins (found through the entry point
``score_decomposition`` of the group ``lightning_marl.plugins``):

- ``score_decomposition``: per-agent conditional diffusion models eps_i(a_i^k, k | s, a_<i)
  pre-trained on the data; ``mode: independent`` conditions on s only (the ablation);
- ``bc_regulariser``: the plain behaviour-cloning direction a_D - a (the other ablation).

Both implement ``actor_regulariser`` for the ``omsd`` method, which weights their score by 1/beta.
"""

from lightning_marl_plugins.score_decomposition.bc import BCRegulariser
from lightning_marl_plugins.score_decomposition.common import default_beta
from lightning_marl_plugins.score_decomposition.scores import ScoreDecomposition

__all__ = ["BCRegulariser", "ScoreDecomposition", "default_beta"]
