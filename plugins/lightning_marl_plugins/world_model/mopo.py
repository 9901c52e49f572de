"""The MOPO-style baseline: an ensemble of Gaussian global dynamics models with a reward penalty (METHODS.md §3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch

from lightning_marl.nets.world_models import GaussianEnsemble
from lightning_marl.registry import register
from lightning_marl_plugins.world_model.base import WorldModelAugmentation, WorldModelParams


@dataclass
class MOPOParams(WorldModelParams):
    members: int = 5  # Gaussian models in the ensemble [choice]
    penalty: float = 1.0  # lambda in r - lambda·max_k ||sigma_k(s, a)||_2 [choice]
    hidden: List[int] = field(default_factory=lambda: [200, 200])
    weighted_sampling: bool = False  # MOPO samples synthetic rows uniformly; u is stored for reports


@register("plugin", "mopo_ensemble")
class MOPOEnsemble(WorldModelAugmentation):
    """MOPO baseline: K Gaussian global models (stacked parameters, one batched call) predict the change
    of (s, o_1..o_N) and the reward; rollouts draw a random member per row and step; the reward is
    penalised by lambda·max_k ||sigma_k(s, a)||_2 (next-state std in raw units), which is also stored as u.

    Example:
        >>> from lightning_marl.algorithms.qmix_cql import QMIXCQL
        >>> from lightning_marl.collect.matrix import matrix_game_transitions
        >>> td, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1)], [0.5, 0.5], n=64)
        >>> plugin = MOPOEnsemble(MOPOParams(iterations=20, hidden=[16, 16], rollout_batch=16))
        >>> module = QMIXCQL.from_spec(spec, plugins=[plugin], hidden=[16, 16], mixer_embed=8)
        >>> plugin.setup(module, td); plugin.pretrain(td, module)
        >>> plugin.augment_batch(td[:32], module).batch_size
        torch.Size([32])
    """

    Params = MOPOParams

    def build_model(self, spec) -> GaussianEnsemble:
        p = self.params
        return GaussianEnsemble(p.members, spec.n_agents, spec.obs_dim, spec.action_width,
                                spec.state_dim + spec.n_agents * spec.agent_state_dim, hidden=tuple(p.hidden),
                                n_actions=spec.n_actions if spec.discrete else 0)

    def draw_rows(self, generator, train_rows):
        """One minibatch per member ([K, B] row indices): members see different data orders."""
        pick = torch.randint(len(train_rows), (self.params.members, self.params.batch_size), generator=generator)
        return train_rows[pick]

    def predict_mean(self, observation, action, state) -> dict:
        out = self.model(observation, action, state)
        mean = out["mean"].mean(0)  # the ensemble's mean prediction
        next_observation, next_state, _ = self.model.decode(mean, observation, state)
        return {"next_observation": next_observation, "next_state": next_state,
                "uncertainty": self.model.sigma_norm(out).max(0).values}

    @torch.no_grad()
    def model_step(self, observation, action, state, generator) -> dict:
        out = self.model(observation, action, state)
        k, r = out["mean"].shape[:2]
        member = torch.randint(k, (r,), generator=generator).to(observation.device)
        rows = torch.arange(r, device=observation.device)
        mean, log_std = out["mean"][member, rows], out["log_std"][member, rows]
        sample = mean + log_std.exp() * torch.randn(mean.shape, generator=generator).to(mean.device)
        next_observation, next_state, reward = self.model.decode(sample, observation, state)
        uncertainty = self.model.sigma_norm(out).max(0).values  # [R]
        mask_logits = out["mask_logits"]
        return {
            "next_observation": next_observation, "next_state": next_state,
            "reward": reward - self.params.penalty * uncertainty.unsqueeze(-1),
            "terminated": out["termination_logit"][member, rows] > 0,
            "next_mask": mask_logits[member, rows] > 0 if mask_logits is not None else None,
            "uncertainty": uncertainty,
        }
