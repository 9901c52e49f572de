"""LOGO: a local-to-global world model whose uncertainty steers which synthetic rows are sampled (METHODS.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_marl.nets.world_models import LocalToGlobalModel
from lightning_marl.registry import register
from lightning_marl_plugins.world_model.base import WorldModelAugmentation, WorldModelParams


@dataclass
class LOGOParams(WorldModelParams):
    latent: int = 64  # local encoder output z_i
    context: int = 64  # global context c = MLP(s, a)
    reconstruction_weight: float = 0.5  # weight of the local reconstruction loss [choice]
    reward_in_uncertainty: bool = True  # [choice] u also compares the two reward predictions


@register("plugin", "logo")
class LOGO(WorldModelAugmentation):
    """LOGO world model: local next-observation predictors (shared, agent id), a deductive model
    to (s', r, termination) and a direct encoder (s, a) -> s' whose disagreement u(s, a) weights
    the synthetic rows: P(row) ∝ exp(clip(C - u, 0, C)), C the 90 % quantile of u on held-out data.

    Example:
        >>> from lightning_marl.algorithms.qmix_cql import QMIXCQL
        >>> from lightning_marl.collect.matrix import matrix_game_transitions
        >>> td, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1)], [0.5, 0.5], n=64)
        >>> plugin = LOGO(LOGOParams(iterations=20, hidden=[16, 16], latent=8, context=8, rollout_batch=16))
        >>> module = QMIXCQL.from_spec(spec, plugins=[plugin], hidden=[16, 16], mixer_embed=8)
        >>> plugin.setup(module, td); plugin.pretrain(td, module)
        >>> batch = plugin.augment_batch(td[:32], module)
        >>> batch.batch_size, int((batch["episode"] < 0).sum())     # half the rows are synthetic
        (torch.Size([32]), 16)
    """

    Params = LOGOParams

    def build_model(self, spec) -> LocalToGlobalModel:
        p = self.params
        return LocalToGlobalModel(
            spec.n_agents, spec.obs_dim, spec.action_width, spec.state_dim + spec.n_agents * spec.agent_state_dim,
            hidden=tuple(p.hidden), latent=p.latent, context=p.context,
            n_actions=spec.n_actions if spec.discrete else 0, reconstruction_weight=p.reconstruction_weight,
            reward_in_uncertainty=p.reward_in_uncertainty,
        )

    def predict_mean(self, observation, action, state) -> dict:
        return self.model(observation, action, state)

    @torch.no_grad()
    def model_step(self, observation, action, state, generator) -> dict:
        out = self.model(observation, action, state)
        return {
            "next_observation": out["next_observation"], "next_state": out["next_state"], "reward": out["reward"],
            "terminated": out["termination_logit"] > 0,
            "next_mask": out["mask_logits"] > 0 if out["mask_logits"] is not None else None,
            "uncertainty": out["uncertainty"],
        }
