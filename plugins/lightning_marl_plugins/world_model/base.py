"""What every world-model augmentation plugin shares: fitting, branch rollouts, the synthetic buffer and mixing.

A subclass says which network it fits (``build_model``) and how one model step turns
(o, a, s) into (o', s', r, termination, next mask, u) (``model_step``); the rest is here:

- ``pretrain``: split the dataset by episode into training and held-out rows (the same split and
  data order on every rank), fit the model for ``iterations`` minibatches, then set the sampling
  threshold C = the ``quantile`` of u on the held-out rows. A restored (checkpointed) model is not
  refitted.
- rollouts: every ``rollout_every`` iterations, ``rollout_batch`` dataset states branch for
  ``horizon`` steps under the CURRENT policy (``module.act`` on the observations, with
  ``exploration`` noise), into a ring buffer of ``capacity`` rows that stores u. Synthetic rows
  follow the batch contract: next-step keys, done = terminated (predicted), truncated = False
  (the rollout horizon is not a time limit: targets bootstrap from the last state), episode ids
  are negative (-1 - branch number: they mark synthetic rows), per-agent rewards are the
  predicted team reward, ``next.agents.action`` is the policy's action at the next observation.
- discrete action masks [choice]: the model predicts each agent's next action mask (a Bernoulli
  head, threshold 0.5); the first step uses the dataset's mask, and an agent whose predicted
  mask has no available action keeps its current mask. The policy acts only on available actions.
- ``augment_batch``: the first (1 - real_ratio)·B rows of the real batch are replaced by synthetic
  rows drawn from the buffer with ``module.rng`` (weights ∝ exp(clip(C - u, 0, C)) when
  ``weighted_sampling``); a batch of the same size B and the same keys comes back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from lightning_marl.data import schema
from lightning_marl.data.datamodule import sample_seed
from lightning_marl.errors import ConfigError, PluginError
from lightning_marl.nets.precision import forget_cast_weights
from lightning_marl.plugin import Plugin, TrainingRows
from lightning_marl_plugins.world_model.buffer import UNCERTAINTY, SyntheticBuffer

log = logging.getLogger(__name__)

_MODEL_KEYS = (schema.OBS, schema.ACTION, schema.STATE, schema.NEXT_OBS, schema.NEXT_STATE, schema.REWARD,
               schema.TERMINATED)


@dataclass
class WorldModelParams:
    """Hyper-parameters shared by the world-model plugins (METHODS.md §3; [choice] where not given)."""

    iterations: int = 3000  # minibatch steps of model fitting in pretrain
    batch_size: int = 256
    lr: float = 1e-3
    hidden: List[int] = field(default_factory=lambda: [256, 256])
    held_out: float = 0.1  # fraction of episodes held out (threshold C and diagnostics)
    horizon: int = 0  # rollout length H; 0: 5 for continuous, 15 for discrete actions
    rollout_every: int = 250  # iterations between buffer refreshes
    rollout_batch: int = 1000  # dataset states branched per refresh
    capacity: int = 25000  # synthetic rows kept (ring buffer)
    real_ratio: float = 0.5  # fraction of real rows in each batch
    exploration: float = 0.1  # rollout policy noise: Gaussian std (continuous) / epsilon (discrete)
    weighted_sampling: bool = True  # weights exp(clip(C - u, 0, C)); False: uniform
    quantile: float = 0.9  # C = this quantile of u on held-out real transitions
    checkpoint_buffer: bool = True  # save the synthetic rows with checkpoints (exact resume)


class WorldModelAugmentation(Plugin):
    """Base class of world-model plugins: pretrain + rollouts + uncertainty-weighted mixing.

    Subclasses implement ``build_model(spec)`` and ``model_step(observation, action_features, state,
    generator)``; they may override ``model_loss`` and ``held_out_uncertainty``.
    """

    Params = WorldModelParams

    def __init__(self, params=None):
        super().__init__(params)
        p = self.params
        if not 0.0 <= p.real_ratio <= 1.0 or not 0.0 < p.quantile < 1.0 or not 0.0 <= p.held_out < 1.0:
            raise ConfigError(f"world model: real_ratio must lie in [0, 1], quantile in (0, 1) and held_out in [0, 1); "
                              f"found {p.real_ratio}, {p.quantile}, {p.held_out}")
        if min(p.capacity, p.rollout_batch, p.batch_size) < 1 or p.horizon < 0 or p.rollout_every < 1:
            raise ConfigError(f"world model: capacity, rollout_batch, batch_size and rollout_every must be >= 1 and "
                              f"horizon >= 0 (0: the default); found {p.capacity}, {p.rollout_batch}, "
                              f"{p.batch_size}, {p.rollout_every}, {p.horizon}")
        self.model = None
        self.spec = None
        self.data: TrainingRows | None = None  # the training rows, read on demand
        self.fitted = False
        self.threshold = 0.0
        self.diagnostics: dict[str, float] = {}
        self.buffer = SyntheticBuffer(self.params.capacity, weighted=self.params.weighted_sampling)
        self.last_refresh = -1
        self.branches = 0
        self._pending = None
        self._device = torch.device("cpu")
        self._batch_keys = None

    # ---- what a subclass writes -----------------------------------------------------------
    def build_model(self, spec) -> torch.nn.Module:
        raise NotImplementedError

    def model_step(self, observation, action, state, generator) -> dict:
        """One predicted step: next_observation, next_state, reward [R, 1], terminated (bool [R, 1]),
        next_mask ([R, N, K] bool or None) and uncertainty [R]."""
        raise NotImplementedError

    def model_loss(self, tensors: dict) -> torch.Tensor:
        return sum(self.model.loss(**tensors).values())

    def draw_rows(self, generator: torch.Generator, train_rows: torch.Tensor) -> torch.Tensor:
        """Training row indices of one minibatch."""
        pick = torch.randint(len(train_rows), (self.params.batch_size,), generator=generator)
        return train_rows[pick]

    # ---- the contract <-> model tensors ----------------------------------------------------
    @property
    def horizon(self) -> int:
        return self.params.horizon or (15 if self.spec.discrete else 5)

    def action_features(self, action: torch.Tensor) -> torch.Tensor:
        """Continuous actions as they are; discrete indices one-hot: [..., N] -> [..., N, K]."""
        if self.spec.discrete:
            return F.one_hot(action, self.spec.n_actions).float()
        return action

    def state_vector(self, td, next: bool = False) -> torch.Tensor:
        """The global state the model predicts: "state", with the per-agent states appended flat."""
        state = td.get(schema.NEXT_STATE if next else schema.STATE)
        if self.spec.agent_state_dim:
            agent_state = td.get(schema.NEXT_AGENT_STATE if next else schema.AGENT_STATE)
            state = torch.cat([state, agent_state.flatten(-2)], -1)
        return state

    def split_state(self, vector: torch.Tensor) -> tuple:
        s = self.spec.state_dim
        if not self.spec.agent_state_dim:
            return vector, None
        return vector[..., :s], vector[..., s:].unflatten(-1, (self.spec.n_agents, self.spec.agent_state_dim))

    def model_tensors(self, td) -> dict:
        """Keyword arguments of ``model.loss`` from transitions (any batch shape)."""
        td = td.to(self._device)
        tensors = {
            "observation": td.get(schema.OBS), "action": self.action_features(td.get(schema.ACTION)),
            "state": self.state_vector(td), "next_observation": td.get(schema.NEXT_OBS),
            "next_state": self.state_vector(td, next=True), "reward": td.get(schema.REWARD),
            "terminated": td.get(schema.TERMINATED),
        }
        if self.spec.discrete:
            tensors["next_mask"] = td.get(schema.NEXT_ACTION_MASK)
        return tensors

    def _model_keys(self):
        keys = list(_MODEL_KEYS)
        if self.spec.discrete:
            keys.append(schema.NEXT_ACTION_MASK)
        if self.spec.agent_state_dim:
            keys += [schema.AGENT_STATE, schema.NEXT_AGENT_STATE]
        return keys

    # ---- hooks ------------------------------------------------------------------------------
    def setup(self, module, datamodule) -> None:
        self.spec = module.spec
        self._device = module.device
        if datamodule is not None:
            self.data = TrainingRows(datamodule)
        if self.model is None:
            self.model = self.build_model(self.spec).to(self._device)
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None

    def pretrain(self, datamodule, module) -> None:
        if self.model is None or self.data is None:
            self.setup(module, datamodule)
        if self.fitted:
            return  # restored from a checkpoint: never refitted
        if self.data is None:
            raise PluginError("world model: pretrain needs the dataset (pass the run's datamodule)")
        train_rows, held_rows = self.split(module.seed)
        self.fit(train_rows, seed=module.seed)
        self.calibrate(held_rows)
        self.fitted = True
        log.info("world model fitted: %s", self.diagnostics)
        logger = getattr(module, "logger", None) if module._trainer is not None else None
        if logger is not None:
            logger.log_metrics({f"world_model/{k}": v for k, v in self.diagnostics.items()}, step=module.iteration)

    def split(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and held-out row indices, split by episode with a generator seeded by the run's seed."""
        episode = torch.as_tensor(self.data.column(schema.EPISODE))
        ids = torch.unique(episode)
        g = torch.Generator().manual_seed(sample_seed(seed, 0, 0) ^ 0x5B17)
        held_count = int(math.ceil(self.params.held_out * len(ids))) if self.params.held_out > 0 else 0
        if len(ids) > 1:
            held_count = min(held_count, len(ids) - 1)
        held_ids = ids[torch.randperm(len(ids), generator=g)[:held_count]]
        held = torch.isin(episode, held_ids)
        rows = torch.arange(len(episode))
        return rows[~held], rows[held]

    def fit(self, train_rows: torch.Tensor, seed: int = 0) -> None:
        """Standardisers from (up to 100k) training rows, then ``iterations`` Adam steps (same on every rank)."""
        p = self.params
        g = torch.Generator().manual_seed(sample_seed(seed, 0, 1) ^ 0x5B17)
        keys = self._model_keys()
        stats_rows = train_rows[torch.randperm(len(train_rows), generator=g)[:100_000]]
        t = self.model_tensors(self.data.rows(stats_rows, keys))
        self.model.fit_statistics(t["observation"], t["action"], t["state"], t["next_observation"],
                                  t["next_state"], t["reward"])
        optimiser = torch.optim.Adam(self.model.parameters(), lr=p.lr)
        self.model.train()
        for _ in range(p.iterations):
            loss = self.model_loss(self.model_tensors(self.data.rows(self.draw_rows(g, train_rows), keys)))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            optimiser.step()
            forget_cast_weights()  # (only matters if called inside an autocast region)
        self.model.eval()

    @torch.no_grad()
    def evaluate_rows(self, rows: torch.Tensor, chunk: int = 8192) -> dict:
        """Per-row diagnostics on dataset rows: the model's u, its next-state and next-observation squared
        errors and those of predicting "no change" (standardised by the state/observation spread)."""
        out = {name: [] for name in ("uncertainty", "state_error", "no_change_state_error", "obs_error",
                                     "no_change_obs_error")}
        keys = self._model_keys()
        stats = self.model.stats
        for start in range(0, len(rows), chunk):
            t = self.model_tensors(self.data.rows(rows[start:start + chunk], keys))
            pred = self.predict_mean(t["observation"], t["action"], t["state"])
            s_true, s_prev = stats.state(t["next_state"]), stats.state(t["state"])
            o_true, o_prev = stats.obs(t["next_observation"]), stats.obs(t["observation"])
            out["uncertainty"].append(pred["uncertainty"])
            out["state_error"].append((stats.state(pred["next_state"]) - s_true).pow(2).mean(-1))
            out["no_change_state_error"].append((s_prev - s_true).pow(2).mean(-1))
            out["obs_error"].append((stats.obs(pred["next_observation"]) - o_true).pow(2).mean((-1, -2)))
            out["no_change_obs_error"].append((o_prev - o_true).pow(2).mean((-1, -2)))
        return {name: torch.cat(values).cpu() for name, values in out.items()}

    def predict_mean(self, observation, action, state) -> dict:
        """The model's (deterministic) prediction: next_observation, next_state and uncertainty [R]."""
        raise NotImplementedError

    def calibrate(self, held_rows: torch.Tensor) -> None:
        """C = the ``quantile`` of u on held-out real rows; diagnostics (mean squared errors) recorded."""
        if len(held_rows) == 0:
            held_rows = torch.arange(min(len(self.data), 10_000))
        held_rows = held_rows[:200_000]
        result = self.evaluate_rows(held_rows)
        self.threshold = float(torch.quantile(result["uncertainty"].double(), self.params.quantile))
        self.buffer.set_threshold(self.threshold)
        self.diagnostics = {
            "held_out_rows": float(len(held_rows)),
            "threshold": self.threshold,
            "held_out_state_mse": float(result["state_error"].mean()),
            "no_change_state_mse": float(result["no_change_state_error"].mean()),
            "held_out_obs_mse": float(result["obs_error"].mean()),
            "no_change_obs_mse": float(result["no_change_obs_error"].mean()),
        }

    # ---- rollouts ---------------------------------------------------------------------------
    def _generator(self, module) -> torch.Generator:
        rank = module.global_rank if module._trainer is not None else 0
        return torch.Generator().manual_seed(sample_seed(module.seed, rank, module.iteration) ^ 0xB4A)

    @torch.no_grad()
    def policy_action(self, module, observation, mask, generator) -> torch.Tensor:
        """The current policy's action with exploration noise (continuous std / discrete epsilon)."""
        action = module.act(observation, mask)
        noise = self.params.exploration
        if noise <= 0:
            return action
        if self.spec.discrete:
            flat = mask.reshape(-1, mask.shape[-1]).float().cpu()
            random = torch.multinomial(flat, 1, generator=generator).reshape(action.shape).to(action.device)
            explore = (torch.rand(action.shape, generator=generator) < noise).to(action.device)
            return torch.where(explore, random, action)
        gaussian = torch.randn(action.shape, generator=generator).to(action.device)
        return (action + noise * gaussian).clamp(-1.0, 1.0)

    @torch.no_grad()
    def rollout(self, module, generator: torch.Generator) -> TensorDict:
        """Branch ``rollout_batch`` dataset states for ``horizon`` steps; synthetic rows [R'] with u."""
        spec, device = self.spec, self._device
        start = torch.randint(len(self.data), (self.params.rollout_batch,), generator=generator)
        keys = [schema.OBS, schema.STATE] + ([schema.AGENT_STATE] if spec.agent_state_dim else []) \
            + ([schema.ACTION_MASK] if spec.discrete else [])
        td = self.data.rows(start, keys).to(device)
        observation, state = td.get(schema.OBS), self.state_vector(td)
        mask = td.get(schema.ACTION_MASK) if spec.discrete else None
        r = observation.shape[0]
        episode = -1 - (self.branches + torch.arange(r, device=device))
        self.branches += r
        alive = torch.ones(r, dtype=torch.bool, device=device)
        action = self.policy_action(module, observation, mask, generator)
        steps = []
        for _ in range(self.horizon):
            out = self.model_step(observation, self.action_features(action), state, generator)
            next_mask = None
            if spec.discrete:
                next_mask = out["next_mask"]
                next_mask = torch.where(next_mask.any(-1, keepdim=True), next_mask, mask)
            next_action = self.policy_action(module, out["next_observation"], next_mask, generator)
            steps.append(self._rows(observation, action, state, mask, out, next_mask, next_action, episode)[alive])
            alive = alive & ~out["terminated"].reshape(-1)
            if not alive.any():
                break
            observation, state, mask, action = out["next_observation"], out["next_state"], next_mask, next_action
        return torch.cat(steps)

    def _rows(self, observation, action, state, mask, out, next_mask, next_action, episode) -> TensorDict:
        r, n = observation.shape[0], self.spec.n_agents
        terminated = out["terminated"].reshape(r, 1)
        state_part, agent_state = self.split_state(state)
        next_state_part, next_agent_state = self.split_state(out["next_state"])
        rows = {
            schema.OBS: observation, schema.ACTION: action, schema.STATE: state_part,
            schema.NEXT_OBS: out["next_observation"], schema.NEXT_STATE: next_state_part,
            schema.NEXT_ACTION: next_action, schema.REWARD: out["reward"],
            schema.AGENT_REWARD: out["reward"].unsqueeze(-2).expand(r, n, 1),
            schema.TERMINATED: terminated, schema.TRUNCATED: torch.zeros_like(terminated),
            schema.DONE: terminated.clone(), schema.WON: torch.zeros_like(terminated), schema.EPISODE: episode,
            UNCERTAINTY: out["uncertainty"],
        }
        if agent_state is not None:
            rows[schema.AGENT_STATE], rows[schema.NEXT_AGENT_STATE] = agent_state, next_agent_state
        if self.spec.discrete:
            rows[schema.ACTION_MASK], rows[schema.NEXT_ACTION_MASK] = mask, next_mask
        return TensorDict(rows, batch_size=[r], device=observation.device)

    def refresh(self, module) -> None:
        """Roll out the current policy in the model and append the rows to the synthetic buffer."""
        if self.model is None or self.data is None:
            raise PluginError("world model: augment_batch was called before setup/pretrain (no model or dataset)")
        self.buffer.extend(self.rollout(module, self._generator(module)))
        self.last_refresh = module.iteration

    def augment_batch(self, batch, module):
        """``batch`` [B] with round((1 - real_ratio)·B) rows replaced by synthetic ones (same keys)."""
        if batch.batch_dims != 1:
            raise PluginError(f"world model plugins mix transitions [B]; found a batch of shape {list(batch.batch_size)} "
                              "(sequence slices are not supported): use a method that trains on transitions")
        if self.last_refresh < 0 or module.iteration - self.last_refresh >= self.params.rollout_every:
            self.refresh(module)
        size = batch.shape[0]
        synthetic = int(round((1.0 - self.params.real_ratio) * size))
        if synthetic == 0 or len(self.buffer) == 0:
            return batch
        if self._batch_keys is None:
            self._batch_keys = list(batch.keys(include_nested=True, leaves_only=True))
            missing = [schema.key_name(k) for k in self._batch_keys if k not in self.buffer.data]
            if missing:
                raise PluginError(f"world model: the batch has keys {missing} that synthetic rows do not provide; "
                                  f"synthetic rows have {sorted(schema.key_name(k) for k in self.buffer.data)}")
        index = self.buffer.sample(synthetic, module.rng)
        rows = self.buffer.rows(index, self._batch_keys)
        return torch.cat([batch[:size - synthetic], rows.to(batch.device)], 0)

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "fitted": self.fitted, "threshold": self.threshold, "diagnostics": dict(self.diagnostics),
            "last_refresh": self.last_refresh, "branches": self.branches,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if self.model is not None else {},
        }
        if self.params.checkpoint_buffer and len(self.buffer):
            state["buffer"] = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in self.buffer.state_dict().items()}
            state["buffer"]["values"] = [v.cpu() for v in state["buffer"]["values"]]
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.model is None:
            self._pending = state  # applied by setup once the task's shapes are known
            return
        self._restore(state)

    def _restore(self, state: dict) -> None:
        self.fitted = bool(state.get("fitted", False))
        self.threshold = float(state.get("threshold", 0.0))
        self.diagnostics = dict(state.get("diagnostics", {}))
        self.branches = int(state.get("branches", 0))
        if state.get("model"):
            self.model.load_state_dict(state["model"])
            self.model.eval()
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"], device=self._device)
            self.last_refresh = int(state.get("last_refresh", -1))
        else:
            self.last_refresh = -1  # no saved rows: roll out again at the next step
        self.buffer.set_threshold(self.threshold)
