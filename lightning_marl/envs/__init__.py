"""Environments: one factory to batched TorchRL envs in the batch contract, and evaluation.

Example:
    >>> from lightning_marl.envs import env_spec, make_env
    >>> env = make_env("vmas", "navigation", num_envs=4, max_steps=20, n_agents=3)
    >>> env_spec(env)["n_agents"]
    3
"""

from lightning_marl.envs import mamujoco, matrix_games, mpe, smac, smax, vmas  # noqa: F401  (registers the env factories)
from lightning_marl.envs.evaluation import rollout_returns
from lightning_marl.envs.factory import env_spec, make_env
from lightning_marl.envs.matrix_games import MatrixGameEnv, payoff

__all__ = ["MatrixGameEnv", "env_spec", "make_env", "payoff", "rollout_returns"]
