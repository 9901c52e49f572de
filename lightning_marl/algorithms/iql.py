"""IQL, independent or centralised critics (METHODS.md §5): expectile V, TD twin Q, AWR actor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightning_marl.algorithms.base import CONTINUOUS, DISCRETE, OfflineMARLModule
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.nets import AgentMLP, stochastic_actor
from lightning_marl.nets.critics import AgentQ, central_critics, expectile_loss
from lightning_marl.registry import register


@dataclass
class IQLConfig(AlgorithmConfig):
    """IQL's hyper-parameters (METHODS.md §5 defaults).

    Example:
        >>> c = IQLConfig()
        >>> c.centralised, c.expectile, c.beta, c.max_weight
        (False, 0.7, 3.0, 100.0)
    """

    name: str = "iql"
    centralised: bool = False  # Q(s, a), V(s) over the state and the joint action; else Q_i(o_i, a_i), V_i(o_i)
    expectile: float = 0.7  # tau_e of the expectile value loss
    beta: float = 3.0  # inverse temperature of the advantage weights exp(beta·(Q̄ - V))
    max_weight: float = 100.0  # advantage weights are clipped at this value


@register("algorithm", "iql")
class IQL(OfflineMARLModule):
    """IQL: V by expectile regression on the twin-target min Q̄, Q by TD to r + gamma (1-d) V(s'),
    the actor by advantage-weighted behaviour cloning; only dataset actions are ever queried.

    ``centralised=False`` gives per-agent Q_i(o_i, a_i), V_i(o_i); ``centralised=True`` one
    Q(s, a), V(s) over the (mixer) state and the joint action, whose advantage weights every
    agent's log-likelihood. Both for continuous and discrete actions.

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> module = IQL.from_spec(spec, centralised=True, hidden=[8, 8])
        >>> sorted(module.parameter_groups()), module.act(torch.zeros(5, 2, 3)).shape
        (['policy', 'q', 'v'], torch.Size([5, 2, 2]))
    """

    config_class = IQLConfig
    supports = (CONTINUOUS, DISCRETE)
    hooks = ("augment_batch", "critic_target")

    def build(self) -> None:
        spec, c = self.spec, self.config
        n, o = spec.n_agents, spec.obs_dim
        self.actor = stochastic_actor(spec, c.hidden)
        if c.centralised:
            self.q, self.v = central_critics(spec, c.hidden)
        else:
            widths = {"n_actions": spec.n_actions} if spec.discrete else {"action_dim": spec.action_dim}
            self.q = AgentQ(o, n, c.hidden, **widths)
            self.v = AgentMLP(o, 1, n, c.hidden)
        self.q_target = self.add_target(self.q)

    def parameter_groups(self):
        return {"policy": [self.actor], "q": [self.q], "v": [self.v]}

    def critic_inputs(self, batch, next: bool = False) -> torch.Tensor:
        """What Q and V see: the mixer state [B, S] (centralised) or the observations [B, N, O]."""
        if self.config.centralised:
            return self.mixer_state(batch, next=next)
        return batch.get(schema.NEXT_OBS if next else schema.OBS)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """V: [B, 1] (centralised) or [B, N] (independent)."""
        v = self.v(x)
        return v if self.config.centralised else v.squeeze(-1)

    def values(self, x: torch.Tensor, x_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V at ``x`` (with gradients) and at ``x_next`` (without, for the TD target), as ``value``
        shapes them, from one pass of V over both (``AgentMLP.pair`` / ``StateValue.pair``)."""
        v, v_next = self.v.pair(x, x_next)
        return (v, v_next) if self.config.centralised else (v.squeeze(-1), v_next.squeeze(-1))

    def advantage_weight(self, advantage: torch.Tensor) -> torch.Tensor:
        """min(exp(beta·A), max_weight), computed without overflowing."""
        c = self.config
        return torch.exp(torch.clamp(c.beta * advantage, max=math.log(c.max_weight)))

    def losses(self, batch, intermediates: dict | None = None):
        c = self.config
        observation, action = batch.get(schema.OBS), batch.get(schema.ACTION)
        x, x_next = self.critic_inputs(batch), self.critic_inputs(batch, next=True)
        v, v_next = self.values(x, x_next)
        with torch.no_grad():
            q_bar = self.q_target(x, action).min(0).values
            target = self.bootstrap(batch, v_next)
            target = self.critic_target(batch, target)

        q = self.q(x, action)
        q_loss = ((q - target) ** 2).sum(0).mean()  # the twin critics' squared errors, summed

        v_loss = expectile_loss(q_bar - v, c.expectile)

        weight = self.advantage_weight(q_bar - v.detach())  # [B, N], or [B, 1] shared by the agents
        log_pi = self.actor.log_prob(observation, action, self.action_mask(batch))
        policy_loss = -(weight * log_pi).mean()
        if intermediates is not None:
            intermediates.update(q_bar=q_bar, v=v, target=target, weight=weight, log_pi=log_pi)
        return {"policy": policy_loss, "q": q_loss, "v": v_loss}

    def act(self, observation, mask=None):
        return self.actor.act(observation, mask)
