"""OMSD (METHODS.md §2): deterministic actors on a centralised IQL critic, regularised by
sequentially decomposed behaviour scores (the ``score_decomposition`` plugin) or plain BC."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_marl.algorithms.base import CONTINUOUS, OfflineMARLModule
from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.errors import ConfigError, TrainingError
from lightning_marl.nets import DeterministicActor
from lightning_marl.nets.critics import central_critics, expectile_loss
from lightning_marl.nets.precision import forget_cast_weights
from lightning_marl.registry import register

SEQUENTIAL = ("one_pass", "exact")


@dataclass
class OMSDConfig(AlgorithmConfig):
    """OMSD's hyper-parameters (METHODS.md §2; beta and the scores belong to the plugin).

    Example:
        >>> c = OMSDConfig()
        >>> c.sequential, c.expectile, c.critic_pretrain_steps
        ('one_pass', 0.7, 10000)
    """

    name: str = "omsd"
    sequential: str = "one_pass"  # one_pass: prefix from this step's actors, one backward; exact: n actor steps
    expectile: float = 0.7  # tau_e of the critic's expectile value loss
    critic_pretrain_steps: int = 10_000  # critic-only iterations before the actors start (checkpointed, not redone)
    normalise_observations: bool = False


class PerAgentActors(nn.Module):
    """One deterministic actor per agent (own parameters), for ``sequential: exact``.

    ``forward(observation [..., N, O]) -> [..., N, A]``; ``agent(i, observation)`` runs actor i
    alone on ``observation[..., i, :]`` -> ``[..., 1, A]``.

    Example:
        >>> actors = PerAgentActors(obs_dim=3, action_dim=2, n_agents=2, hidden=(8, 8))
        >>> actors(torch.zeros(5, 2, 3)).shape, actors.agent(1, torch.zeros(5, 2, 3)).shape
        (torch.Size([5, 2, 2]), torch.Size([5, 1, 2]))
    """

    def __init__(self, obs_dim: int, action_dim: int, n_agents: int, hidden=(256, 256)):
        super().__init__()
        self.actors = nn.ModuleList(DeterministicActor(obs_dim, action_dim, 1, hidden) for _ in range(n_agents))

    def agent(self, i: int, observation: torch.Tensor) -> torch.Tensor:
        return self.actors[i](observation[..., i:i + 1, :])

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.agent(i, observation) for i in range(len(self.actors))], dim=-2)


@register("algorithm", "omsd")
class OMSD(OfflineMARLModule):
    """OMSD: deterministic actors pi_i(o_i) trained on a centralised IQL critic Q(s, a), V(s) with
    the surrogate loss -Q(s, a) - (1/beta)·sg[score_i]·a_i, agents in a fixed order, a_<i from the
    actors already updated this step and a_>i from the current ones (both without gradient).

    The scores come from ``actor_regulariser`` plugins (``score_decomposition``, or
    ``bc_regulariser`` for the BC ablation), each weighted by 1/plugin.beta; with none configured
    the actors maximise Q alone. The critic (expectile V, TD Q to r + gamma (1-d) V(s')) is
    pre-trained for ``critic_pretrain_steps`` and keeps training with the actors.

    ``sequential: one_pass`` (default) takes a_<i from this step's actors before any update:
    then the n surrogate losses add up to one -Q(s, pi(o)) term plus the score terms, computed
    in one critic call and one backward (plain DDP). ``sequential: exact`` gives each agent its
    own actor and optimiser and steps them one after another (n backwards; under DDP it needs
    ``trainer.strategy=ddp_find_unused_parameters_true``).

    Example:
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> module = OMSD.from_spec(spec, hidden=[8, 8])
        >>> sorted(module.parameter_groups()), module.act(torch.zeros(5, 2, 3)).shape
        (['policy', 'q', 'v'], torch.Size([5, 2, 2]))
        >>> sorted(OMSD.from_spec(spec, hidden=[8, 8], sequential="exact").parameter_groups())
        ['policy_0', 'policy_1', 'q', 'v']
    """

    config_class = OMSDConfig
    supports = (CONTINUOUS,)
    hooks = ("augment_batch", "critic_target", "actor_regulariser")

    def build(self) -> None:
        spec, c = self.spec, self.config
        if c.sequential not in SEQUENTIAL:
            raise ConfigError(f"algorithm.sequential must be one of {SEQUENTIAL}, found {c.sequential!r}")
        if c.sequential == "exact":
            self.actor = PerAgentActors(spec.obs_dim, spec.action_dim, spec.n_agents, c.hidden)
        else:
            self.actor = DeterministicActor(spec.obs_dim, spec.action_dim, spec.n_agents, c.hidden)
        self.q, self.v = central_critics(spec, c.hidden)
        self.q_target = self.add_target(self.q)
        # Set once the critic's pre-training ran; saved in checkpoints, so a resumed run skips it.
        self.register_buffer("critic_pretrained", torch.zeros((), dtype=torch.long))
        self.critic_pretrain_iterations_run = 0

    def parameter_groups(self):
        if self.config.sequential == "exact":
            actors = {f"policy_{i}": [actor] for i, actor in enumerate(self.actor.actors)}
        else:
            actors = {"policy": [self.actor]}
        return {**actors, "q": [self.q], "v": [self.v]}

    # ---- the critic: centralised IQL --------------------------------------------------------
    def critic_losses(self, batch, intermediates: dict | None = None) -> dict[str, torch.Tensor]:
        """Q by TD to r + gamma (1-d) V(s'), V by expectile regression on the twin-target min Q̄."""
        c = self.config
        state, action = self.mixer_state(batch), batch.get(schema.ACTION)
        with torch.no_grad():
            q_bar = self.q_target(state, action).min(0).values
            target = self.bootstrap(batch, self.v(self.mixer_state(batch, next=True)))
            target = self.critic_target(batch, target)
        q = self.q(state, action)
        v = self.v(state)
        if intermediates is not None:
            intermediates.update(q_bar=q_bar, target=target, v=v)
        return {"q": ((q - target) ** 2).sum(0).mean(), "v": expectile_loss(q_bar - v, c.expectile)}

    # ---- the actors -------------------------------------------------------------------------
    def agent_order(self) -> list[int]:
        """The update order: the first regulariser plugin's ``agent_order``, else 0..n-1."""
        for plugin in self.plugins_with("actor_regulariser"):
            order = getattr(plugin, "agent_order", None)
            if order is not None:
                return list(order)
        return list(range(self.spec.n_agents))

    def regulariser_score(self, batch, joint_action: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        """sum over plugins of (1/beta)·score [B, N, A] at ``joint_action`` (detached)."""
        score = torch.zeros_like(joint_action)
        for plugin in self.plugins_with("actor_regulariser"):
            weight = 1.0 / getattr(plugin, "beta", 1.0)
            score = score + weight * plugin.actor_regulariser(batch, joint_action.detach(), self, agent).detach()
        return score

    def policy_q(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """min of the twin Q(s, a) [B, 1], the critic's weights frozen (the gradient reaches the action)."""
        return self.q(state, joint_action, frozen=True).min(0).values

    def surrogate_loss(self, batch, state: torch.Tensor, action: torch.Tensor, joint_action: torch.Tensor,
                       agent: int | None = None) -> torch.Tensor:
        """mean_B[-Q(s, a) - sum_i (1/beta)·sg[score_i(a_i | s, a_<i)]·a_i].

        ``action [B, N, A]`` carries the gradient of the agents being updated; ``joint_action`` is
        the same joint action detached, on which the scores are conditioned. With ``agent`` set,
        only that agent's score term counts (``sequential: exact``)."""
        score = self.regulariser_score(batch, joint_action, agent)
        if agent is not None:
            score = score * (torch.arange(score.shape[-2], device=score.device) == agent).unsqueeze(-1)
        return (-self.policy_q(state, action) - (score * action).sum((-2, -1)).unsqueeze(-1)).mean()

    def losses(self, batch, intermediates: dict | None = None):
        """``sequential: one_pass``: the critic losses and the summed surrogate of every agent.

        With a_<i and a_>i both from this step's actors, the n per-agent losses
        -Q(s, a_<i, pi_i, a_>i) (only pi_i with gradient) add up to the gradient of one -Q(s, pi(o)),
        so one critic call serves all agents; agent i's score is conditioned on pi_<i (detached)."""
        losses = self.critic_losses(batch, intermediates)
        pi = self.actor(self.normalise_observation(batch.get(schema.OBS)))
        losses["policy"] = self.surrogate_loss(batch, self.mixer_state(batch), pi, pi.detach())
        if intermediates is not None:
            intermediates.update(pi=pi)
        return losses

    def train_step(self, batch):
        if self.config.sequential != "exact":
            return super().train_step(batch)
        return self._exact_step(batch)

    def _exact_step(self, batch) -> dict[str, torch.Tensor]:
        """``sequential: exact``: the critic step, then the agents' actor steps one after another."""
        self._seed_rng()
        batch = self.augment_batch(batch)
        optimizers = dict(zip(self.group_parameters, self._optimizers()))
        stats = {}
        critic = self.critic_losses(batch)
        self._step(sum(critic.values()), [optimizers["q"], optimizers["v"]], ["q", "v"], critic, stats)
        self.sequential_actor_steps(batch, optimizers, stats)
        self.update_targets()
        self.iteration += 1
        return stats

    def sequential_actor_steps(self, batch, optimizers: dict, stats: dict) -> None:
        """Agent i = order[0], order[1], ...: its surrogate loss against the actions of the agents
        already updated this step (a_<i) and the current ones (a_>i), its backward, and only its
        optimiser's step (``optimizers``: group name -> optimiser)."""
        state = self.mixer_state(batch)
        observation = self.normalise_observation(batch.get(schema.OBS))
        with torch.no_grad():
            joint = self.actor(observation)
        for i in self.agent_order():
            mine = (torch.arange(joint.shape[-2], device=joint.device) == i).unsqueeze(-1)
            a_i = self.actor.agent(i, observation)  # [B, 1, A], with gradient
            loss = self.surrogate_loss(batch, state, torch.where(mine, a_i, joint), joint, agent=i)
            self._step(loss, [optimizers[f"policy_{i}"]], [f"policy_{i}"], {f"policy_{i}": loss}, stats)
            with torch.no_grad():
                joint = torch.where(mine, self.actor.agent(i, observation), joint)

    def _step(self, loss, optimizers, groups, losses, stats) -> None:
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss {', '.join(groups)} at iteration {self.iteration}. "
                "Lower the learning rate or check the dataset for extreme values (dataset verify)."
            )
        self.zero_grad_groups(groups)
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()
        stats.update(self.clip_and_step(groups, optimizers, groups))
        stats.update({f"loss/{name}": value.detach() for name, value in losses.items()})

    # ---- critic pre-training ------------------------------------------------------------------
    def pretrain(self, datamodule) -> None:
        super().pretrain(datamodule)  # plugins: setup, then pretrain (each skips what a checkpoint restored)
        self.pretrain_critic(datamodule)

    def pretrain_critic(self, datamodule, steps: int | None = None) -> None:
        """Train Q and V alone for ``critic_pretrain_steps`` on rank 0's batch stream (every rank
        draws the same batches, so the ranks agree without communication); skipped once done."""
        steps = self.config.critic_pretrain_steps if steps is None else steps
        if bool(self.critic_pretrained) or steps <= 0 or datamodule is None:
            return
        optimizers = [torch.optim.Adam(self.group_parameters[g], lr=self.config.lr, foreach=True) for g in ("q", "v")]
        with torch.enable_grad():
            for iteration in range(steps):
                self._seed_rng()
                batch = datamodule.sample_for_rank(0, iteration).to(self.device)
                losses = self.critic_losses(self.augment_batch(batch))
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                for group, optimizer in zip(("q", "v"), optimizers):
                    torch.nn.utils.clip_grad_norm_(self.group_parameters[group], self.config.grad_clip, foreach=True)
                    optimizer.step()
                forget_cast_weights()  # (only matters if called inside an autocast region)
                self.update_targets()
                self.critic_pretrain_iterations_run += 1
        self.critic_pretrained.fill_(1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # The ranks ran the same updates; rank 0's copy settles any non-deterministic kernels' drift.
            for tensor in [*self.q.parameters(), *self.v.parameters(), *self.q_target.parameters()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def act(self, observation, mask=None):
        return self.actor(self.normalise_observation(observation))
