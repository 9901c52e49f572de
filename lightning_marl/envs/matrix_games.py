"""Cooperative matrix games: one-step episodes that make coordination failures visible in seconds.

Every agent observes a constant zero of size 1 and every step terminates the episode. The team
reward is the game's payoff for the joint action; each agent's reward is the same value.

- ``climbing`` (2 agents, 3 actions): [[11, -30, 0], [-30, 7, 6], [0, 0, 5]], row: agent 0.
- ``penalty`` (2 agents, 3 actions): [[10, 0, k], [0, 2, 0], [k, 0, 10]], k = -100 by default.
- ``agree`` (n agents): actions {0, 1}, reward 1 when all agree, else 0; or, with
  ``continuous=True``, actions in [-1, 1] and reward 1 - min(mean (a - 1)^2, mean (a + 1)^2).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from lightning_marl.envs.contract import TEAM_REWARD_SHARED
from lightning_marl.errors import ConfigError
from lightning_marl.registry import register

GAMES = ("climbing", "penalty", "agree")
_PARAMS = {"climbing": set(), "penalty": {"k"}, "agree": {"n_agents", "continuous"}}
_CLIMBING = [[11.0, -30.0, 0.0], [-30.0, 7.0, 6.0], [0.0, 0.0, 5.0]]


def _table(game: str, k: float, device) -> torch.Tensor:
    if game == "climbing":
        rows = _CLIMBING
    else:
        rows = [[10.0, 0.0, k], [0.0, 2.0, 0.0], [k, 0.0, 10.0]]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def payoff(
    game: str,
    actions: torch.Tensor,
    *,
    k: float = -100.0,
    n_agents: int | None = None,
    continuous: bool | None = None,
) -> torch.Tensor:
    """Team reward of joint actions, without an environment.

    ``actions`` is int64 [..., N] (discrete games) or float [..., N, 1] (continuous ``agree``);
    the result is float32 with the leading shape ``[...]``. The keywords are the env's params:
    ``k`` sets the penalty; ``n_agents`` and ``continuous``, when given, are checked against
    ``actions``.

    Example:
        >>> payoff("climbing", torch.tensor([[0, 0], [0, 1]]))
        tensor([ 11., -30.])
        >>> payoff("agree", torch.ones(1, 3, 1))
        tensor([1.])
    """
    if game not in GAMES:
        raise ConfigError(f"unknown matrix game {game!r}; valid games: {', '.join(GAMES)}")
    is_float = actions.dtype.is_floating_point
    if continuous is not None and bool(continuous) != is_float:
        raise ValueError(f"continuous={continuous} but the actions have dtype {actions.dtype}")
    found_agents = actions.shape[-2] if is_float and actions.ndim >= 2 else actions.shape[-1]
    if n_agents is not None and n_agents != found_agents:
        raise ValueError(f"n_agents={n_agents} but the actions of shape {tuple(actions.shape)} hold {found_agents}")
    if is_float:
        if game != "agree" or actions.shape[-1] != 1:
            raise ValueError(
                f"float actions of shape {tuple(actions.shape)} only fit continuous 'agree' "
                "([..., N, 1]); discrete games take int64 indices [..., N]"
            )
        a = actions.squeeze(-1).float()
        to_plus, to_minus = (a - 1).pow(2).mean(-1), (a + 1).pow(2).mean(-1)
        return 1.0 - torch.minimum(to_plus, to_minus)
    if game == "agree":
        return (actions == actions[..., :1]).all(-1).float()
    if actions.shape[-1] != 2:
        raise ValueError(f"{game} is a 2-agent game; got actions of shape {tuple(actions.shape)}")
    return _table(game, k, actions.device)[actions[..., 0], actions[..., 1]]


class MatrixGameEnv(EnvBase):
    """A batch of ``num_envs`` copies of one cooperative matrix game, in the batch contract.

    Example:
        >>> env = MatrixGameEnv("climbing", num_envs=4)
        >>> td = env.reset()
        >>> td["agents", "action"] = torch.zeros(4, 2, dtype=torch.int64)
        >>> env.step(td)["next", "reward"].squeeze(-1)
        tensor([11., 11., 11., 11.])
    """

    max_steps = 1
    team_reward_rule = TEAM_REWARD_SHARED

    def __init__(
        self,
        game: str,
        num_envs: int = 32,
        *,
        n_agents: int | None = None,
        continuous: bool = False,
        k: float = -100.0,
        device="cpu",
    ):
        if game not in GAMES:
            raise ConfigError(f"unknown matrix game {game!r}; valid games: {', '.join(GAMES)}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.game, self.k, self.continuous = game, float(k), bool(continuous)
        if game != "agree" and (n_agents not in (None, 2) or continuous):
            raise ConfigError(f"{game} is a 2-agent discrete game; got n_agents={n_agents}, continuous={continuous}")
        self.n_agents = (n_agents or 3) if game == "agree" else 2
        self.n_actions = 2 if game == "agree" else 3
        self.group_map = {"agents": [f"agent_{i}" for i in range(self.n_agents)]}
        self._make_specs()

    def _make_specs(self) -> None:
        e, n, k = self.batch_size[0], self.n_agents, self.n_actions
        agent_obs = {"observation": Unbounded((e, n, 1), device=self.device)}
        if self.continuous:
            action = Bounded(-1.0, 1.0, (e, n, 1), device=self.device)
        else:
            action = Categorical(k, (e, n), dtype=torch.int64, device=self.device)
            agent_obs["action_mask"] = Categorical(2, (e, n, k), dtype=torch.bool, device=self.device)
        self.observation_spec = Composite(
            agents=Composite(agent_obs, shape=(e, n)),
            state=Unbounded((e, n), device=self.device),
            shape=(e,),
        )
        self.action_spec = Composite(agents=Composite(action=action, shape=(e, n)), shape=(e,))
        self.reward_spec = Composite(
            agents=Composite(reward=Unbounded((e, n, 1), device=self.device), shape=(e, n)),
            reward=Unbounded((e, 1), device=self.device),
            shape=(e,),
        )
        flag = Categorical(2, (e, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(e,)
        )

    def _observation(self) -> TensorDict:
        e, n = self.batch_size[0], self.n_agents
        agents = {"observation": torch.zeros(e, n, 1, device=self.device)}
        if not self.continuous:
            agents["action_mask"] = torch.ones(e, n, self.n_actions, dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                "agents": TensorDict(agents, batch_size=(e, n)),
                "state": torch.zeros(e, n, device=self.device),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        out = self._observation()
        for key in ("done", "terminated", "truncated"):
            out[key] = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict["agents", "action"]
        if self.continuous:
            actions = actions.clamp(-1.0, 1.0)
        team = payoff(self.game, actions, k=self.k).unsqueeze(-1)  # [E, 1]
        out = self._observation()
        out["agents", "reward"] = team.unsqueeze(-2).expand(-1, self.n_agents, 1).clone()
        out["reward"] = team
        ones = torch.ones(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        out["done"], out["terminated"], out["truncated"] = ones, ones.clone(), ~ones
        return out

    def _set_seed(self, seed: int | None) -> None:
        pass  # deterministic: nothing to seed


@register("env", "matrix")
def make_matrix_env(
    task: str | None,
    *,
    num_envs: int = 32,
    seed: int = 0,
    device="cpu",
    max_steps: int | None = None,
    **params,
) -> MatrixGameEnv:
    """Built-in cooperative matrix games (climbing, penalty, agree): one-step episodes."""
    if task not in GAMES:
        raise ConfigError(f"unknown matrix game {task!r}; valid tasks: {', '.join(GAMES)}")
    unknown = set(params) - _PARAMS[task]
    if unknown:
        valid = ", ".join(sorted(_PARAMS[task])) or "none"
        raise ConfigError(f"matrix game {task!r} got unknown params {sorted(unknown)}; valid params: {valid}")
    if max_steps not in (None, 1):
        raise ConfigError(f"matrix games are one-step episodes: max_steps must be 1 or unset, got {max_steps}")
    n_agents = params.get("n_agents", 3)
    if task == "agree" and (isinstance(n_agents, bool) or not isinstance(n_agents, int) or n_agents < 2):
        raise ConfigError(f"agree needs an integer n_agents >= 2, got {n_agents!r}")
    env = MatrixGameEnv(task, num_envs, device=device, **params)
    env.set_seed(seed)
    return env
