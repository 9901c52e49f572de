"""ICQ: implicit constraint Q-learning, in-sample (METHODS.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_marl.algorithms.base import DISCRETE
from lightning_marl.algorithms.qmix_cql import QMIXCQL, chosen
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.data.next_action import NEXT_ACTION, add_next_actions
from lightning_marl.errors import DatasetError
from lightning_marl.nets import CategoricalActor
from lightning_marl.nets.recurrent import RecurrentOptions, masked_logits
from lightning_marl.registry import register


def batch_softmax(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax over the batch (dim 0) of values / temperature; each column sums to 1.

    Example:
        >>> batch_softmax(torch.tensor([[0.0], [1000.0]]), 1000.0).squeeze(-1)   # softmax of (0, 1)
        tensor([0.2689, 0.7311])
    """
    return torch.softmax(values / temperature, dim=0)


@dataclass
class ICQConfig(RecurrentOptions, AlgorithmConfig):
    name: str = "icq"
    critic_temperature: float = 1000.0  # T_c of the critic's batch weights (close to uniform)
    actor_temperature: float = 0.1  # T_a of the actor's batch weights
    mixer_embed: int = 32
    normalise_observations: bool = False  # [choice] off: discrete features come pre-scaled
    normalise_state: bool = True  # the mixer's hypernetworks see the state standardised by dataset statistics


@register("algorithm", "icq")
class ICQ(QMIXCQL):
    """ICQ: a QMIX critic trained only on dataset actions, y = r + gamma (1-d) Q̄_tot(s', a'_D),
    weighted by softmax_b(Q̄_tot(s', a'_D)/T_c); a masked categorical actor by advantage-weighted
    behaviour cloning, weights softmax_b(A_i/T_a) with A_i = Q_i(a_i) - E_pi Q_i. Discrete actions.

    Needs the dataset's next joint action ("next", "agents", "action"): ``prepare_transitions``
    adds it once when the DataModule sets up (``lightning_marl.data.next_action.add_next_actions``);
    batches built by hand need it too, except batches in which every row terminates (a'_D is then
    multiplied by 0; the current action stands in, as ``add_next_actions`` would write). Agents'
    actor losses are averaged [choice]. ``recurrent=True``: GRU critic and actor over [B, T]
    episode slices; the batch softmaxes then run over the slices' real steps.

    Example:
        >>> from lightning_marl.collect.matrix import matrix_game_transitions
        >>> from lightning_marl.data.next_action import add_next_actions
        >>> td, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1)], [0.5, 0.5], n=8)
        >>> module = ICQ.from_spec(spec, hidden=[16, 16], mixer_embed=8)
        >>> sorted(module.train_step(add_next_actions(td)))
        ['grad_norm/policy', 'grad_norm/q', 'loss/policy', 'loss/q']
    """

    config_class = ICQConfig
    supports = (DISCRETE,)
    hooks = ("augment_batch", "critic_target")

    def build(self) -> None:
        super().build()
        spec = self.spec
        if self.recurrent:
            self.actor = self.gru_agent(spec.n_actions)  # logits
        else:
            self.actor = CategoricalActor(spec.obs_dim, spec.n_actions, spec.n_agents, self.config.hidden)

    def parameter_groups(self):
        return {"policy": [self.actor], "q": [self.q, self.mixer]}

    def policy_prefixes(self) -> tuple[str, ...]:
        return ("actor.", "obs_")

    def prepare_transitions(self, transitions):
        """The dataset's transitions with the next joint action a'_D (added once, if missing)."""
        if NEXT_ACTION in transitions.keys(include_nested=True):
            return transitions
        return add_next_actions(transitions)

    def next_action(self, batch) -> torch.Tensor:
        """The dataset's next joint action a'_D [B, N] (see the class docstring)."""
        value = batch.get(NEXT_ACTION, None)
        if value is not None:
            return value
        if bool(batch.get(schema.TERMINATED).all()):
            return batch.get(schema.ACTION)
        raise DatasetError(
            "ICQ needs the dataset's next joint action under the key 'next.agents.action' (its critic "
            "is trained in-sample on a'_D), and this batch has non-terminal rows without it. Prepare "
            "the transitions with lightning_marl.data.next_action.add_next_actions(transitions)."
        )

    @torch.no_grad()
    def next_value(self, batch) -> torch.Tensor:
        """In-sample: Q̄_tot(s', a'_D) [B, 1] at the dataset's next joint action."""
        return self.q_tot(batch, self.q_target, self.mixer_target, self.next_action(batch), next=True)

    def losses(self, batch, intermediates: dict | None = None):
        c = self.config
        observation, action, mask = batch.get(schema.OBS), batch.get(schema.ACTION), self.action_mask(batch)
        with torch.no_grad():
            next_value = self.next_value(batch)
            target = self.critic_target(batch, self.td_target(batch, next_value))
            critic_weights = batch_softmax(self.rows(batch, next_value), c.critic_temperature)  # [B, 1]
        values = self.agent_values(self.q, batch)  # [B, N, K]
        q_tot = self.mixer.mix_values(chosen(values, action), self.mixer_state(batch))
        q_loss = (critic_weights * self.rows(batch, (q_tot - target) ** 2)).sum()

        if self.recurrent:
            logits = masked_logits(self.unrolled(self.actor, batch), mask)
        else:
            logits = self.actor(self.normalise_observation(observation), mask)
        log_pi_all = torch.log_softmax(logits.float(), -1)
        log_pi = chosen(log_pi_all, action)  # [B, N]
        with torch.no_grad():
            q_values = values.masked_fill(~mask, 0.0) if mask is not None else values
            advantage = chosen(q_values, action) - (log_pi_all.exp() * q_values).sum(-1)  # [B, N]
            actor_weights = batch_softmax(self.rows(batch, advantage), c.actor_temperature)  # per agent over the batch
        policy_loss = -(actor_weights * self.rows(batch, log_pi)).sum(0).mean()
        if intermediates is not None:
            intermediates.update(target=target, critic_weights=critic_weights, q_tot=q_tot, advantage=advantage,
                                 actor_weights=actor_weights, log_pi=log_pi)
        return {"policy": policy_loss, "q": q_loss}

    @torch.no_grad()
    def act(self, observation, mask=None):
        """The actor's most likely available action: [..., N, O] -> [..., N]."""
        if self.recurrent:
            return masked_logits(self.policy_step(self.actor, observation), mask).argmax(-1)
        return self.actor.act(self.normalise_observation(observation), mask)
