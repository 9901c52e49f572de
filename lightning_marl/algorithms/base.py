"""The base LightningModule of every offline MARL method.

A method subclass writes only ``build`` (its networks), ``parameter_groups`` (which networks
each loss trains), ``losses`` (the equations of METHODS.md) and ``act`` (decentralised
execution). The base class owns everything else: optimisers, one backward per step of the sum
of losses that touch disjoint parameter groups, per-group gradient clipping, Polyak updates of
the declared target networks (one fused call), the method's own iteration counter, NaN checks,
plugin hook calls, logging every N steps and checkpoint state.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import operator
import time

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from lightning_marl.config import AlgorithmConfig
from lightning_marl.data import schema
from lightning_marl.data.datamodule import batch_seed
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import ConfigError, PluginError, TrainingError
from lightning_marl.nets.optim import ClippedAdam, clip_group_gradients
from lightning_marl.nets.precision import float32_outputs, forget_cast_weights
from lightning_marl.nets.recurrent import GRUAgent
from lightning_marl.nets.target import polyak_update
from lightning_marl.plugin import ALWAYS_CALLED, Plugin

# Hooks the online loop calls (checked by `finetune`, not by the method): fit refuses them.
ONLINE_HOOKS = ("explore",)

CONTINUOUS, DISCRETE = "continuous", "discrete"


class OfflineMARLModule(L.LightningModule):
    """Base class of methods: subclasses implement build, parameter_groups, losses and act.

    Example:
        >>> from lightning_marl.algorithms.bc import BC
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> module = BC.from_spec(spec, hidden=[8, 8])
        >>> module.act(torch.zeros(5, 2, 3)).shape
        torch.Size([5, 2, 2])
    """

    config_class = AlgorithmConfig
    supports: tuple[str, ...] = (CONTINUOUS, DISCRETE)
    hooks: tuple[str, ...] = ()

    def __init__(self, spec: TaskSpec, config: AlgorithmConfig, plugins: list[Plugin] = (), log_every: int = 100):
        super().__init__()
        self.automatic_optimization = False
        self.spec = spec
        self.config = config
        self.plugins = list(plugins)
        self.log_every = log_every
        self.iteration = 0
        self.env_steps = 0  # environment steps collected online (finetune); plugins schedule on it
        # The run config as YAML text (stored in checkpoints); the runner replaces it with the whole run's.
        self.config_yaml = OmegaConf.to_yaml({"algorithm": OmegaConf.structured(config)})
        self.dataset_info: dict = {}
        self.last_stats: dict[str, float] = {}
        self.interrupted_at: int | None = None  # set when a signal stopped training early
        self.seed = 0  # the run's seed (set by the runner); with rank and iteration it seeds self.rng
        self._rng: torch.Generator | None = None
        self._rng_seed_iteration: int | None = None  # the iteration ``rng`` is to be seeded for on its next use
        self._target_pairs: list[tuple[nn.Module, nn.Module]] = []
        self._standalone_optimizers = None
        self._last_step_stats: dict[str, torch.Tensor] = {}
        self._losses_due: set[str] | None = None
        self._last_log_time = None
        self._last_log_iteration = 0
        self._check_support()
        self._register_normaliser()
        self.build()
        for network in self.children():  # bf16 autocast: matmuls in bfloat16, losses in float32
            float32_outputs(network)
        self._check_plugins()

    # ---- what a method writes -------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Module]]:
        """Loss name -> the networks that loss trains (disjoint sets; one optimiser each)."""
        raise NotImplementedError

    def losses(self, batch) -> dict[str, torch.Tensor]:
        """One scalar loss per parameter group, all from one batch."""
        raise NotImplementedError

    def act(self, observation: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decentralised actions: [..., N, O] -> [..., N, A] in [-1, 1], or indices [..., N]."""
        raise NotImplementedError

    def policy_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of what decentralised execution needs (saved in policy.pt)."""
        return ("actor.", "obs_")

    @property
    def registry_name(self) -> str:
        return getattr(type(self), "_registry_name", type(self).__name__)

    def learning_rates(self) -> dict[str, float]:
        """Per-group learning rates; defaults to ``config.lr`` for every group."""
        return {}

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: TaskSpec, plugins: list[Plugin] = (), log_every: int = 100, **overrides):
        """Build a method for a task with its default hyper-parameters, some overridden."""
        fields = OmegaConf.structured(cls.config_class)
        config = OmegaConf.to_object(OmegaConf.merge(fields, overrides))
        return cls(spec, config, plugins=plugins, log_every=log_every)

    def _check_support(self) -> None:
        kind = DISCRETE if self.spec.discrete else CONTINUOUS
        if kind not in self.supports:
            raise ConfigError(
                f"{type(self).__name__} does not support {kind} actions (it supports "
                f"{', '.join(self.supports)}); choose another algorithm for this dataset"
            )

    def _check_plugins(self) -> None:
        for plugin in self.plugins:
            unused = [h for h in plugin.implemented_hooks()
                      if h not in ALWAYS_CALLED and h not in ONLINE_HOOKS and h not in self.hooks]
            if unused:
                raise PluginError(
                    f"plugin {getattr(plugin, '_registry_name', type(plugin).__name__)!r} implements "
                    f"{', '.join(unused)}, which the method {type(self).__name__} never calls (it calls "
                    f"{', '.join(self.hooks) or 'no hooks'}); remove the plugin or choose a method that uses it"
                )

    def add_target(self, online: nn.Module) -> nn.Module:
        """A frozen copy of ``online`` that ``update_targets`` moves toward it (Polyak, tau)."""
        target = copy.deepcopy(online)
        target.requires_grad_(False)
        self._target_pairs.append((online, target))
        return target

    # ---- plugin hooks ---------------------------------------------------------------------
    def plugins_with(self, hook: str) -> list[Plugin]:
        """The configured plugins that implement ``hook``, in configured order."""
        return [plugin for plugin in self.plugins if hook in plugin.implemented_hooks()]

    def augment_batch(self, batch):
        """The batch after every plugin's ``augment_batch`` (called before the losses)."""
        for plugin in self.plugins_with("augment_batch"):
            batch = plugin.augment_batch(batch, self)
        return batch

    def critic_target(self, batch, target: torch.Tensor) -> torch.Tensor:
        """The TD target after every plugin's ``critic_target`` (methods call this)."""
        for plugin in self.plugins_with("critic_target"):
            target = plugin.critic_target(batch, target, self)
        return target

    def explore(self, td):
        """The actions to execute online after every plugin's ``explore`` (the online loop calls
        this): ``td`` [E] holds the observations, masks and the policy's ("agents", "action")."""
        for plugin in self.plugins_with("explore"):
            td = plugin.explore(td, self)
        return td

    # ---- training -------------------------------------------------------------------------
    def configure_optimizers(self):
        return self._make_optimizers()

    def _make_optimizers(self):
        rates = self.learning_rates()
        return [
            ClippedAdam(self.group_parameters[name], lr=rates.get(name, self.config.lr))
            for name in self.parameter_groups()
        ]

    @property
    def group_parameters(self) -> dict[str, list[torch.Tensor]]:
        """Group name -> its parameters (computed once; the networks do not change after build)."""
        if not hasattr(self, "_group_parameters"):
            self._group_parameters = {
                group: [p for net in nets for p in net.parameters()] for group, nets in self.parameter_groups().items()
            }
        return self._group_parameters

    def _optimizers(self):
        if self._trainer is not None:
            optimizers = self.optimizers()
            return optimizers if isinstance(optimizers, list) else [optimizers]
        if self._standalone_optimizers is None:
            self._standalone_optimizers = self._make_optimizers()
        return self._standalone_optimizers

    @property
    def rng(self) -> torch.Generator:
        """The generator for a method's own randomness (target noise, sampled actions, searches).

        Re-seeded at every iteration from (seed, rank, iteration), like the batch sampler: a
        resumed run and every DDP rank reproduce it without saving any RNG state.
        """
        if self._rng is None or self._rng.device != self.device:
            self._rng = torch.Generator(device=self.device)
        pending = self._rng_seed_iteration
        if pending is not None:
            self.__dict__["_rng_seed_iteration"] = None  # written past nn.Module.__setattr__ (slower)
            rank = self.global_rank if self._trainer is not None else 0
            self._rng.manual_seed(batch_seed(self.seed, rank, pending) ^ 0x5EED)  # = sample_seed's, in blocks
        return self._rng

    def _seed_rng(self) -> None:
        """Re-seed ``rng`` for this iteration, on its first use (most steps never draw from it, and
        computing the seed costs more than the rest of the bookkeeping of a step)."""
        self.__dict__["_rng_seed_iteration"] = self.iteration

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        """One training iteration: losses, one backward, clip, step every optimiser, targets.

        Works inside a Trainer and standalone (tests, benchmarks). Returns the losses (detached)
        and the gradient norms before clipping.
        """
        self._seed_rng()
        batch = self.augment_batch(batch)
        required = set(self.group_parameters) if self.every_loss_each_step() else set(self.groups_to_step())
        self._losses_due = required
        try:
            losses = self.losses(batch)
        finally:
            self._losses_due = None
        if not required <= set(losses) <= set(self.group_parameters):
            raise TrainingError(f"{type(self).__name__}.losses returned {sorted(losses)}, expected "
                                f"{sorted(required)} (and at most {sorted(self.group_parameters)})")
        groups = [name for name in self.group_parameters if name in losses]
        total = functools.reduce(operator.add, losses.values())  # sum() would first add the int 0
        if not math.isfinite(total.item()):  # one scalar read (isfinite is four operations on a 0-d tensor)
            bad = [name for name, value in losses.items() if not torch.isfinite(value)]
            raise TrainingError(
                f"non-finite loss {', '.join(bad)} at iteration {self.iteration}; nothing was updated "
                f"and nothing saved was overwritten. {self._last_good_checkpoint()}"
                "Lower the learning rate or check the dataset for extreme values (dataset verify)."
            )
        optimizers = [opt for name, opt in zip(self.group_parameters, self._optimizers(), strict=True) if name in losses]
        self.zero_grad_groups(self.group_parameters)  # also a group whose loss was left out: no stale gradients
        if self._trainer is not None:
            self.manual_backward(total)
        else:
            total.backward()
        stats = self.clip_and_step(groups, optimizers, self.groups_to_step())
        if self.targets_due():
            self.update_targets()
        self.iteration += 1
        stats.update({f"loss/{name}": value.detach() for name, value in losses.items()})
        self._last_step_stats.update(stats)  # a group whose loss was left out: its last values
        return dict(self._last_step_stats)

    def loss_due(self, name: str) -> bool:
        """Whether ``losses`` must compute group ``name``'s loss: always, except inside
        ``train_step`` for a group that does not step this iteration (``groups_to_step``) when
        not ``every_loss_each_step()``. Calling ``losses`` directly computes every loss."""
        return self._losses_due is None or name in self._losses_due

    def every_loss_each_step(self) -> bool:
        """Whether every loss must be computed at every iteration, also for groups that do not step
        (``groups_to_step``): under DDP (more than one process), whose gradient reduction expects
        a gradient for every parameter. Alone, a method may leave out the losses of such groups
        (TD3's actor between its delayed steps), which changes nothing but the time taken."""
        return self._trainer is not None and self.trainer.world_size > 1

    def zero_grad_groups(self, groups) -> None:
        """Forget the gradients of ``groups`` (set to None, as ``zero_grad(set_to_none=True)``)."""
        for name in groups:
            for parameter in self.group_parameters[name]:
                parameter.grad = None

    def clip_and_step(self, groups, optimizers, due) -> dict[str, torch.Tensor]:
        """Clip each group's gradients to ``config.grad_clip`` (its own norm) and step the
        optimisers of the groups in ``due``; returns the norms before clipping as
        ``grad_norm/<group>``. One norm pass over every group; the clipping itself happens inside
        the fused Adam kernel (``nets.optim``). A group that does not step keeps unclipped gradients."""
        norms, scales = clip_group_gradients([self.group_parameters[name] for name in groups], self.config.grad_clip)
        for name, optimizer, scale in zip(groups, optimizers, scales):
            if name not in due:
                continue
            inner = getattr(optimizer, "optimizer", optimizer)  # a Trainer wraps it in a LightningOptimizer
            if isinstance(inner, ClippedAdam):
                inner.grad_scale = scale
            else:
                grads = [p.grad for p in self.group_parameters[name] if p.grad is not None]
                if grads:
                    torch._foreach_div_(grads, scale)
            optimizer.step()
        forget_cast_weights()  # bf16-mixed: a later forward in this step must see the new weights
        return {f"grad_norm/{name}": norm for name, norm in zip(groups, norms)}

    def _last_good_checkpoint(self) -> str:
        callbacks = self._trainer.callbacks if self._trainer is not None else []
        for callback in callbacks:
            last = getattr(callback, "last", None)
            if last is not None and last.exists():
                return f"The last good checkpoint is {last} (resume with resume=<run dir>). "
        return "No checkpoint had been saved yet. "

    def compile_losses(self, cuda: bool = False) -> None:
        """Replace ``losses`` by its ``torch.compile``d version (config key ``compile``).

        The compiled graph covers the losses' forward and backward; on CUDA the "reduce-overhead"
        mode also captures it in a CUDA graph, removing per-kernel launch overhead, which is where
        small per-agent networks lose most of their time on an accelerator. On these CPUs eager
        is as fast or faster (FACTS.md), so the switch is off by default.
        """
        self.losses = torch.compile(self.losses, mode="reduce-overhead" if cuda else "default", dynamic=False)

    def groups_to_step(self):
        """Groups whose optimiser steps this iteration. All by default; a delayed schedule (TD3's
        actor every second step) returns fewer. ``losses`` may then leave out the other groups'
        losses, unless ``every_loss_each_step()`` (DDP: a gradient for every parameter at every step)."""
        return self.group_parameters.keys()

    def targets_due(self) -> bool:
        """Whether the target networks move this iteration (every iteration by default)."""
        return True

    def update_targets(self) -> None:
        if not self._target_pairs:
            return
        if not hasattr(self, "_target_lists"):
            self._target_lists = (
                [p for _, t in self._target_pairs for p in t.parameters()],
                [p for o, _ in self._target_pairs for p in o.parameters()],
            )
        polyak_update(*self._target_lists, self.config.tau)

    def on_train_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "wait_for_page_cache"):  # pretraining reads the dataset at random too
            datamodule.wait_for_page_cache()
        with self.precision_context():
            self.pretrain(datamodule)
        if self.iteration >= self.config.steps:
            self.trainer.should_stop = True

    def pretrain(self, datamodule) -> None:
        """Training before the first iteration, under the trainer's precision (``on_train_start``
        is outside Lightning's autocast region): the plugins' setup and pretraining. A method
        with a pretraining phase of its own extends this (OMSD's critic)."""
        for plugin in self.plugins:
            plugin.setup(self, datamodule)
        for plugin in self.plugins:
            plugin.pretrain(datamodule, self)

    def precision_context(self):
        """The trainer's precision context (``bf16-mixed``: bfloat16 autocast, as around
        ``training_step``) for training done outside it (``pretrain``); a null context without a
        trainer."""
        trainer = self._trainer
        return trainer.precision_plugin.train_step_context() if trainer is not None else contextlib.nullcontext()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.iteration >= self.config.steps:
            self.trainer.should_stop = True

    def training_step(self, batch, batch_idx):
        """One iteration per batch; a list of batches (the datamodule's ``iterations_per_batch``)
        runs one iteration per batch in it."""
        for one in batch if isinstance(batch, list) else (batch,):
            stats = self.train_step(one)
            if self.iteration % self.log_every == 0 or self.iteration == self.config.steps:
                self._log_stats(stats)

    def _log_stats(self, stats: dict) -> None:
        now = time.perf_counter()
        metrics = {name: float(value) for name, value in stats.items()}
        if self._last_log_time is not None:
            steps = self.iteration - self._last_log_iteration
            metrics["grad_steps_per_s"] = steps / max(now - self._last_log_time, 1e-9)
        self._last_log_time, self._last_log_iteration = now, self.iteration
        self.last_stats = dict(metrics)
        metrics["iteration"] = self.iteration
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.iteration)
        self.log_dict(
            {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("loss/")},
            prog_bar=True, logger=False, on_step=True, batch_size=1,
        )

    # ---- observation normalisation (methods with ``normalise_observations`` in their config) ----
    @property
    def normalises_observations(self) -> bool:
        return bool(getattr(self.config, "normalise_observations", False))

    @property
    def normalises_state(self) -> bool:
        """Whether the mixer's state input is standardised by dataset statistics (``normalise_state``)."""
        return bool(getattr(self.config, "normalise_state", False))

    def _register_normaliser(self) -> None:
        if self.normalises_observations:
            self.register_buffer("obs_mean", torch.zeros(self.spec.obs_dim))
            self.register_buffer("obs_std", torch.ones(self.spec.obs_dim))
        if self.normalises_state:
            self.register_buffer("state_mean", torch.zeros(self.spec.mixer_state_dim))
            self.register_buffer("state_std", torch.ones(self.spec.mixer_state_dim))

    @torch.no_grad()
    def fit_state_normaliser(self, transitions, chunk: int = 1 << 16) -> None:
        """Set state_mean/state_std from the dataset's mixer inputs (chunked: the data stays mapped)."""
        state = transitions.get(schema.AGENT_STATE if self.spec.agent_state_dim else schema.STATE)
        total = torch.zeros(self.spec.mixer_state_dim, dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, state.shape[0], chunk):
            block = state[start:start + chunk].reshape(-1, self.spec.mixer_state_dim).double()
            total += block.sum(0)
            squares += (block**2).sum(0)
        count = max(state.shape[0], 1)
        mean = total / count
        std = (squares / count - mean**2).clamp(min=0).sqrt()
        self.state_mean.copy_(mean.float())
        self.state_std.copy_(std.float().clamp(min=1e-3))

    @torch.no_grad()
    def fit_observation_normaliser(self, transitions, chunk: int = 1 << 16) -> None:
        """Set obs_mean/obs_std from a dataset's observations (over transitions and agents)."""
        observation = transitions.get(schema.OBS)
        total = torch.zeros(self.spec.obs_dim, dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, observation.shape[0], chunk):
            block = observation[start:start + chunk].reshape(-1, self.spec.obs_dim).double()
            total += block.sum(0)
            squares += (block**2).sum(0)
        count = observation.shape[0] * observation.shape[1]
        mean = total / count
        std = (squares / count - mean**2).clamp(min=0).sqrt()
        self.obs_mean.copy_(mean.float())
        self.obs_std.copy_(std.float().clamp(min=1e-3))

    def normalise_observation(self, observation: torch.Tensor) -> torch.Tensor:
        if not self.normalises_observations:
            return observation
        return (observation - self.obs_mean) / self.obs_std

    def setup(self, stage: str) -> None:
        # Runs before a checkpoint is restored, which then overwrites these statistics on resume.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.normalises_observations and datamodule is not None and hasattr(datamodule, "dataset"):
            self.fit_observation_normaliser(datamodule.dataset.arrays)
        if self.normalises_state and datamodule is not None and hasattr(datamodule, "dataset"):
            self.fit_state_normaliser(datamodule.dataset.arrays)

    # ---- state ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.setdefault("lightning_marl", {})
        state["iteration"] = self.iteration
        state["env_steps"] = self.env_steps
        state["spec"] = self.spec.to_dict()
        state["algorithm"] = self.registry_name
        state["config_yaml"] = self.config_yaml
        state["dataset"] = self.dataset_info
        state["plugins"] = [plugin.state_dict() for plugin in self.plugins]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("lightning_marl", {})
        self.iteration = int(state.get("iteration", 0))
        self.env_steps = int(state.get("env_steps", 0))
        for plugin, plugin_state in zip(self.plugins, state.get("plugins", [])):
            plugin.load_state_dict(plugin_state)

    # ---- helpers shared by methods --------------------------------------------------------
    def mixer_state(self, batch, next: bool = False) -> torch.Tensor:
        """The mixer's input: concatenated per-agent states when the data has them, else state."""
        if self.spec.agent_state_dim:
            value = batch.get(schema.NEXT_AGENT_STATE if next else schema.AGENT_STATE).flatten(-2)
        else:
            value = batch.get(schema.NEXT_STATE if next else schema.STATE)
        if self.normalises_state:
            value = (value - self.state_mean) / self.state_std
        return value

    def not_terminated(self, batch) -> torch.Tensor:
        """1 - terminated, [B, 1] (truncation keeps bootstrapping)."""
        return 1.0 - batch.get(schema.TERMINATED).to(torch.float32)

    def bootstrap(self, batch, next_value: torch.Tensor) -> torch.Tensor:
        """The TD target r + gamma (1 - terminated) ``next_value`` ([B, 1], or [B, N] for per-agent
        values), in two operations (a boolean ``terminated`` selects the discount; truncation keeps
        bootstrapping)."""
        terminated = batch.get(schema.TERMINATED)
        alive = ~terminated if terminated.dtype == torch.bool else self.not_terminated(batch)
        return torch.addcmul(batch.get(schema.REWARD), alive, next_value, value=self.config.gamma)

    def mean_squared_error(self, batch, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mean over the batch's loss rows (``rows``) of (prediction - target)^2: one operation
        forward and one backward for a transition batch (``F.mse_loss``; same shapes required)."""
        if self.loss_mask(batch) is None:
            return F.mse_loss(prediction, target)
        return self.rows(batch, (prediction - target) ** 2).mean()

    def action_mask(self, batch, next: bool = False):
        if not self.spec.discrete:
            return None
        return batch.get(schema.NEXT_ACTION_MASK if next else schema.ACTION_MASK)

    # ---- recurrent agents (methods whose config mixes in nets.recurrent.RecurrentOptions) ------
    @property
    def recurrent(self) -> bool:
        """Whether the agent networks are GRUs over [B, T] episode slices (config ``recurrent``)."""
        return bool(getattr(self.config, "recurrent", False))

    @property
    def slice_len(self) -> int | None:
        """T of the [B, T] slices the DataModule samples for this method; None: transitions [B]."""
        return int(self.config.slice_len) if self.recurrent else None

    def prepare_transitions(self, transitions):
        """The dataset's transitions [T], once before sampling; a method may add derived keys."""
        return transitions

    def gru_agent(self, out_features: int) -> GRUAgent:
        """A GRU agent network over o_i (width ``config.gru_hidden``): [B, T, N, O] -> [B, T, N, K]."""
        c = self.config
        if not self.spec.discrete:
            raise ConfigError(
                f"{type(self).__name__}: recurrent agents (algorithm.recurrent=true) are implemented for discrete "
                "actions only; set algorithm.recurrent=false for continuous control"
            )
        if c.slice_len < 1 or not 0 <= c.burn_in < c.slice_len:
            raise ConfigError(
                f"algorithm.slice_len={c.slice_len} and algorithm.burn_in={c.burn_in}: need slice_len >= 1 and "
                "0 <= burn_in < slice_len"
            )
        return GRUAgent(self.spec.obs_dim, out_features, self.spec.n_agents, c.gru_hidden)

    def unrolled(self, net: GRUAgent, batch, next: bool = False) -> torch.Tensor:
        """A GRU agent network unrolled over a slice batch from a zero state: outputs at o [B, T, N, K],
        or with ``next=True`` at o' (one step from the hidden state after each step)."""
        observation = self.normalise_observation(batch.get(schema.OBS))
        if not next:
            return net(observation)[0]
        return net(observation, self.normalise_observation(batch.get(schema.NEXT_OBS)))[1]

    def loss_mask(self, batch) -> torch.Tensor | None:
        """The steps [B, T] of a slice batch that enter the losses (None for a transition batch):
        not padding, and past ``burn_in`` unless the slice starts at an episode's first step."""
        mask = batch.get(schema.MASK, None)
        burn_in = int(getattr(self.config, "burn_in", 0))
        if mask is None or burn_in <= 0:
            return mask
        warm = torch.arange(mask.shape[-1], device=mask.device) >= burn_in
        is_init = batch.get(schema.IS_INIT, None)
        exact = is_init[..., :1] if is_init is not None else torch.zeros_like(mask[..., :1])
        return mask & (warm | exact)

    def rows(self, batch, value: torch.Tensor) -> torch.Tensor:
        """``value`` unchanged for a transition batch [B, ...]; for a slice batch [B, T, ...] only the
        loss steps, [M, ...], so that means, maxima and softmaxes over "the batch" skip padding."""
        mask = self.loss_mask(batch)
        return value if mask is None else value[mask]

    @torch.no_grad()
    def policy_step(self, net: GRUAgent, observation: torch.Tensor) -> torch.Tensor:
        """One decentralised step of a GRU agent network, carrying each env's hidden state between
        calls (``reset_policy_state`` forgets it at episode starts): [..., N, O] -> [..., N, K]."""
        state = getattr(self, "_policy_state", None)
        if state is None or state.shape[:-1] != observation.shape[:-1] or state.device != observation.device:
            state = net.initial_state(observation.shape[:-2], observation.device)
        out, self._policy_state = net.step(self.normalise_observation(observation), state)
        return out

    def reset_policy_state(self, done: torch.Tensor | None = None) -> None:
        """Recurrent policies forget the hidden state of every env (``done`` None) or of the envs
        where ``done`` [E] is True (their next observation starts an episode); no-op otherwise."""
        state = getattr(self, "_policy_state", None)
        if done is None or state is None:
            self._policy_state = None
            return
        done = torch.as_tensor(done, dtype=torch.bool, device=state.device).reshape(*state.shape[:-2], 1, 1)
        self._policy_state = state.masked_fill(done, 0.0)
