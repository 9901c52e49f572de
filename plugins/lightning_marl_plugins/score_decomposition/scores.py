"""OMSD's sequential score decomposition: per-agent conditional diffusion behaviour scores.

By the chain rule mu(a|s) = prod_i mu_i(a_i | s, a_<i) for a fixed agent order; one conditional
DDPM per agent estimates grad_{a_i} log mu_i(a_i | s, a_<i) (METHODS.md §2). The agents share one
noise network with their id appended; agent i sees the state and the joint action with every
agent at or after its place in the order zeroed (a masked prefix), so all agents train and score
in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from lightning_marl.data import schema
from lightning_marl.errors import PluginError
from lightning_marl.nets.diffusion import SCHEDULES, ConditionalDiffusion
from lightning_marl.nets.precision import forget_cast_weights
from lightning_marl.plugin import Plugin, transitions_of
from lightning_marl.registry import register
from lightning_marl_plugins.score_decomposition.common import resolve_beta

MODES = ("sequential", "independent")
IN_MEMORY_BYTES = 1 << 30  # pretraining copies the action and state columns into memory below this size


def prefix_mask(order, n_agents: int) -> torch.Tensor:
    """M [N, N]: M[i, j] = 1 when agent j comes before agent i in ``order`` (a_<i), else 0.

    Example:
        >>> prefix_mask([2, 0, 1], 3)   # agent 2 first, then 0, then 1
        tensor([[0., 0., 1.],
                [1., 0., 1.],
                [0., 0., 0.]])
    """
    position = torch.empty(n_agents, dtype=torch.long)
    position[torch.as_tensor(list(order))] = torch.arange(n_agents)
    return (position.unsqueeze(0) < position.unsqueeze(1)).float()


@register("plugin", "score_decomposition")
class ScoreDecomposition(Plugin):
    """Behaviour scores from per-agent conditional diffusion models (OMSD, METHODS.md §2).

    ``pretrain`` fits eps_i(a_i^k, k | s, a_<i) once (checkpointed; a resumed run skips it);
    ``actor_regulariser`` returns score_i = -eps_i(a_i, k | s, a_<i) / sqrt(1 - ᾱ_k) [B, N, A] at the
    actors' actions, a_<i taken from the ``actions`` passed in. ``mode: independent`` conditions on
    s only (the ablation). ``beta`` unset takes 0.001 (expert data), 0.3 (random), 0.01 otherwise.

    Example:
        >>> from tensordict import TensorDict
        >>> from lightning_marl.algorithms.omsd import OMSD
        >>> from lightning_marl.data.schema import TaskSpec
        >>> spec = TaskSpec(n_agents=2, obs_dim=1, state_dim=2, discrete=False, action_dim=1)
        >>> data = TensorDict({"state": torch.zeros(64, 2), ("agents", "action"): torch.ones(64, 2, 1)}, [64])
        >>> plugin = ScoreDecomposition(ScoreDecomposition.Params(hidden=[16], iterations=5, batch_size=8))
        >>> module = OMSD.from_spec(spec, plugins=[plugin], hidden=[8, 8])
        >>> plugin.pretrain(data, module)
        >>> plugin.trained, plugin.actor_regulariser(data[:4], torch.zeros(4, 2, 1), module).shape
        (True, torch.Size([4, 2, 1]))
    """

    @dataclass
    class Params:
        beta: Optional[float] = None  # inverse regularisation weight; None: from the dataset's quality label
        diffusion_steps: int = 5  # K noise levels
        noise_schedule: str = "vp"  # vp | linear | cosine
        score_level: int = 1  # the noise level k of the score (1 = least noisy)
        hidden: List[int] = field(default_factory=lambda: [256, 256, 256])
        time_dim: int = 16  # sinusoidal embedding of k
        iterations: int = 10_000  # pretraining iterations of the diffusion models
        batch_size: int = 256
        lr: float = 1e-3  # [choice] measured: 3e-4 for 2000 iterations left the VMAS scores untrained
        agent_order: Optional[List[int]] = None  # None: 0, 1, ..., n-1
        mode: str = "sequential"  # sequential: condition on (s, a_<i); independent: on s only

    def __init__(self, params=None):
        super().__init__(params)
        p = self.params
        if p.mode not in MODES:
            raise PluginError(f"score_decomposition mode must be one of {MODES}, found {p.mode!r}")
        if p.noise_schedule not in SCHEDULES:
            raise PluginError(f"noise_schedule must be one of {SCHEDULES}, found {p.noise_schedule!r}")
        if not 1 <= p.score_level <= p.diffusion_steps:
            raise PluginError(f"score_level must lie in 1..diffusion_steps={p.diffusion_steps}, found {p.score_level}")
        self.beta = resolve_beta(p.beta, None)
        self.trained = False
        self.model: ConditionalDiffusion | None = None
        self.agent_order: list[int] | None = None
        self.pretrain_iterations_run = 0  # iterations run in this process (a resumed run runs none)
        self.last_loss: float | None = None
        self._pending: dict | None = None

    # ---- networks -------------------------------------------------------------------------
    def build(self, spec, device=None) -> ConditionalDiffusion:
        """The noise model for a task (built once; a state loaded before it is applied here)."""
        if self.model is None:
            p, n = self.params, spec.n_agents
            order = list(range(n)) if p.agent_order is None else [int(i) for i in p.agent_order]
            if sorted(order) != list(range(n)):
                raise PluginError(f"agent_order must be a permutation of 0..{n - 1}, found {p.agent_order}")
            self.agent_order = order
            condition_dim = spec.mixer_state_dim + (n * spec.action_dim if p.mode == "sequential" else 0)
            self.model = ConditionalDiffusion(spec.action_dim, condition_dim, n, p.hidden, p.diffusion_steps,
                                              p.noise_schedule, p.time_dim)
            self.model.register_buffer("prefix", prefix_mask(order, n), persistent=False)
            if self._pending is not None and self._pending.get("model"):
                self.model.load_state_dict(self._pending["model"])
        if device is not None and self.model.alphas_bar.device != torch.device(device):
            self.model.to(device)
        return self.model

    def condition(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """Each agent's conditioning [B, N, C]: the state, and (sequential) the joint action with the
        agents not before it in the order zeroed. ``state: [B, S]``, ``joint_action: [B, N, A]``."""
        n = joint_action.shape[-2]
        parts = [state.unsqueeze(-2).expand(*state.shape[:-1], n, state.shape[-1])]
        if self.params.mode == "sequential":
            prefix = self.model.prefix.to(joint_action.dtype).unsqueeze(-1)  # [N, N, 1]
            parts.append((joint_action.unsqueeze(-3) * prefix).flatten(-2))
        return torch.cat(parts, dim=-1)

    # ---- hooks ----------------------------------------------------------------------------
    def setup(self, module, datamodule) -> None:
        self.beta = resolve_beta(self.params.beta, datamodule)
        self.build(module.spec, module.device)

    def pretrain(self, datamodule, module) -> None:
        """Fit the diffusion models with the DDPM loss (same seed and data order on every rank).

        Skipped when the plugin's state says they are trained (a resumed run)."""
        model = self.build(module.spec, module.device)
        if self.trained:
            return
        p, device = self.params, module.device
        data = transitions_of(datamodule, keys=[schema.ACTION, schema.STATE, schema.AGENT_STATE])
        if data.bytes() < IN_MEMORY_BYTES:
            data = data.to_tensordict()
        seed = int(getattr(module, "seed", 0))
        index_generator = torch.Generator().manual_seed(seed)
        noise_generator = torch.Generator(device=device).manual_seed(seed + 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
        model.train()
        running = 0.0
        with torch.enable_grad():
            for iteration in range(p.iterations):
                batch = data[torch.randint(len(data), (p.batch_size,), generator=index_generator)].to(device)
                action = batch.get(schema.ACTION)
                loss = model.loss(action, self.condition(module.mixer_state(batch), action), noise_generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                forget_cast_weights()  # (only matters if called inside an autocast region)
                running = loss.item() if iteration == 0 else 0.99 * running + 0.01 * loss.item()
                self.pretrain_iterations_run += 1
        model.eval()
        self.trained, self.last_loss = True, running
        logger = getattr(module, "logger", None) if getattr(module, "_trainer", None) is not None else None
        if logger is not None:
            logger.log_metrics({"pretrain/diffusion_loss": running}, step=0)

    def actor_regulariser(self, batch, actions, module, agent=None):
        """score_i(a_i | s, a_<i) [B, N, A] at ``actions`` (no gradient; for every agent, also when
        ``agent`` is given: agent i's row is conditioned on the rows of the agents before it)."""
        if not self.trained:
            raise PluginError(
                "score_decomposition: the diffusion models are not trained; pretrain(datamodule, module) must run "
                "before the actor update (the trainer calls it at the start of fit)"
            )
        model = self.build(module.spec, actions.device)
        with torch.no_grad():
            joint = actions.detach()
            return model.score(joint, self.condition(module.mixer_state(batch), joint), self.params.score_level)

    def state_dict(self) -> dict:
        model = {} if self.model is None else {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {"trained": self.trained, "beta": self.beta, "model": model}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state
        self.trained = bool(state.get("trained", False))
        self.beta = float(state.get("beta", self.beta))
        if self.model is not None and state.get("model"):
            self.model.load_state_dict(state["model"])
