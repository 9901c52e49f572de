"""StarCraft II SMAC / SMACv2 through TorchRL's ``SMACv2Env``, for users who have the game.

Not tested here: it needs StarCraft II (``SC2PATH``) and the ``smacv2`` package
(``pip install git+https://github.com/oxwhirl/smacv2.git``), neither of which can be installed on
the CI machines. Without them, ``make_env("smac", ...)`` raises a ConfigError that says so. For
StarCraft-like battles without the game use env ``smax``.

``num_envs`` games run in a torchrl ``SerialEnv`` (each SC2 instance is a separate process of the
game anyway). :class:`SMACContract` maps TorchRL's SMACv2 keys onto the batch contract: the shared
reward becomes ("next", "reward") and, per agent, ("next", "agents", "reward"); SMAC's
``episode_limit`` info separates ``truncated`` from ``terminated``; ``battle_won`` becomes
("next", "won"). ``task`` is the map (e.g. "3m", "8m", "protoss_5_vs_5" with a
``capability_config`` for SMACv2); ``params`` go to ``SMACv2Env``.
"""

from __future__ import annotations

from tensordict import TensorDictBase
from torchrl.data import Categorical, Unbounded
from torchrl.envs import Transform

from lightning_marl.envs.contract import TEAM_REWARD_SHARED
from lightning_marl.errors import ConfigError
from lightning_marl.registry import register

INSTALL = (
    "env 'smac' runs StarCraft II through smacv2: install the game (set SC2PATH) and "
    "`pip install git+https://github.com/oxwhirl/smacv2.git`; without the game use env 'smax' "
    '(pip install "lightning_marl[smax]")'
)


class SMACContract(Transform):
    """Completes one TorchRL ``SMACv2Env`` to the batch contract (see the module docstring).

    Example:
        >>> SMACContract().in_keys
        []
    """

    def __init__(self):
        super().__init__(in_keys=[], out_keys=[])

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        done = next_tensordict["done"]
        limit = next_tensordict["info", "episode_limit"].reshape(done.shape)
        next_tensordict["truncated"] = done & limit
        next_tensordict["terminated"] = done & ~limit
        next_tensordict["won"] = next_tensordict["info", "battle_won"].reshape(done.shape)
        n = next_tensordict["agents", "observation"].shape[-2]
        reward = next_tensordict["reward"]
        next_tensordict["agents", "reward"] = reward.unsqueeze(-2).expand(*reward.shape[:-1], n, 1).clone()
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        false = tensordict_reset["done"].clone().zero_()
        return tensordict_reset.update({"truncated": false, "won": false.clone()})

    def transform_done_spec(self, done_spec):
        done_spec["truncated"] = done_spec["done"].clone()
        return done_spec

    def transform_observation_spec(self, observation_spec):
        done = observation_spec["info", "battle_won"]
        observation_spec["won"] = Categorical(2, (*observation_spec.shape, 1), dtype=done.dtype, device=done.device)
        return observation_spec

    def transform_reward_spec(self, reward_spec):
        reward = reward_spec["reward"]
        n = self.parent.full_observation_spec["agents", "observation"].shape[-2]
        reward_spec["agents", "reward"] = Unbounded((*reward.shape[:-1], n, 1), device=reward.device)
        return reward_spec


@register("env", "smac")
def make_smac_env(
    task: str | None,
    *,
    num_envs: int = 1,
    seed: int = 0,
    device="cpu",
    max_steps: int | None = None,
    **params,
):
    """StarCraft II SMAC/SMACv2 maps through TorchRL's SMACv2Env (needs the game; untested here)."""
    try:
        import smacv2  # noqa: F401
        from torchrl.envs import SerialEnv, TransformedEnv
        from torchrl.envs.libs.smacv2 import SMACv2Env
    except ImportError as error:
        raise ConfigError(f"{INSTALL} ({error})") from error
    if max_steps is not None:
        raise ConfigError("smac maps set their own episode limit; leave max_steps unset")
    if not task:
        raise ConfigError("env 'smac' needs a map name as task, e.g. '3m'")

    def one():
        return TransformedEnv(SMACv2Env(map_name=task, categorical_actions=True, device=device, **params),
                              SMACContract())

    env = SerialEnv(num_envs, one)
    env.set_seed(seed)
    env.team_reward_rule = TEAM_REWARD_SHARED
    return env
