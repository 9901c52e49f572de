"""OVMSE (METHODS.md §4): offline value memory and sequential exploration for online fine-tuning.

Registers three plugins (found through the ``lightning_marl.plugins`` entry point):

- ``value_memory`` (critic_target): the TD target blended with max(Q_tot^off, y), the frozen
  offline Q_tot, by a weight annealed from 1 to 0 over environment steps;
- ``sequential_exploration`` (explore): at most one agent per step deviates to a random
  available action; the others act greedily;
- ``epsilon_greedy`` (explore): every agent deviates independently (the baseline).
"""

from lightning_marl_plugins.value_memory.exploration import EpsilonGreedy, SequentialExploration
from lightning_marl_plugins.value_memory.memory import OfflineValueMemory, linear_schedule

__all__ = ["EpsilonGreedy", "OfflineValueMemory", "SequentialExploration", "linear_schedule"]
