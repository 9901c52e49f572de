"""Decentralised policies saved by a run: ``load_policy(path).act(observation, mask=None)``.

``policy.pt`` holds the method's name, its resolved config (YAML text), the task spec (with the
environment's action bounds) and the actors' tensors (with any observation normaliser). It loads
with ``torch.load(weights_only=True)``: nothing in it is executed.

Example:
    >>> policy = load_policy("runs/omiga-navigation-20261122-040000")     # doctest: +SKIP
    >>> policy.act(torch.zeros(3, 18)).shape                                # doctest: +SKIP
    torch.Size([3, 2])
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_marl import registry
from lightning_marl.config import algorithm_params, from_yaml
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import ConfigError
from lightning_marl.utils import atomic_torch_save

POLICY_FORMAT = "lightning_marl.policy"
POLICY_VERSION = 1


class Policy:
    """The decentralised actors of a trained method, acting in the environment's own units.

    ``act(observation [N, O] or [B, N, O], mask [.., N, K] or None)`` returns actions rescaled
    to the environment's bounds (continuous, [.., N, A]) or action indices (discrete, [.., N]).
    Recurrent policies carry a hidden state per env from one ``act`` to the next; call
    ``reset_hidden()`` before new episodes, or ``reset_hidden(done [B])`` for the envs that
    start one (``rollout_returns`` does); a new Policy starts at an episode's start.

    Example:
        >>> from lightning_marl.algorithms.bc import BC
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=1,
        ...                 action_low=[-2.0], action_high=[2.0])
        >>> Policy(BC.from_spec(spec, hidden=[8, 8])).act(torch.zeros(2, 3)).abs().max() <= 2
        tensor(True)
    """

    def __init__(self, module):
        self.module = module.eval()
        self.spec: TaskSpec = module.spec
        low = torch.tensor(self.spec.action_low or [-1.0], dtype=torch.float32)
        high = torch.tensor(self.spec.action_high or [1.0], dtype=torch.float32)
        self._low, self._half_range = low, (high - low) / 2
        self.reset_hidden()

    def reset_hidden(self, done=None) -> None:
        """Forget recurrent hidden state: of every env (``done`` None) or where ``done`` [B] is True."""
        reset = getattr(self.module, "reset_policy_state", None)
        if reset is not None:
            reset(done)

    @torch.no_grad()
    def act(self, observation, mask=None) -> torch.Tensor:
        device = self.module.device
        observation = torch.as_tensor(observation, dtype=torch.float32, device=device)
        if observation.shape[-2:] != (self.spec.n_agents, self.spec.obs_dim):
            raise ValueError(
                f"observation has shape {list(observation.shape)}, expected [N, O] or [B, N, O] with "
                f"N={self.spec.n_agents}, O={self.spec.obs_dim}"
            )
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.bool, device=device)
        action = self.module.act(observation, mask)
        if self.spec.discrete:
            return action
        low, half = self._low.to(action.device), self._half_range.to(action.device)
        return low + (action.float() + 1.0) * half

    __call__ = act


def _policy_state(module) -> dict:
    keep = module.policy_prefixes()
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if k.startswith(keep)}


def save_policy(path, module, config_yaml: str, dataset: dict | None = None) -> None:
    """Write policy.pt: the actors, the config and the spec (atomic)."""
    atomic_torch_save(
        {
            "format": POLICY_FORMAT,
            "version": POLICY_VERSION,
            "algorithm": module.registry_name,
            "config_yaml": config_yaml,
            "spec": module.spec.to_dict(),
            "state_dict": _policy_state(module),
            "dataset": dataset or {},
        },
        path,
    )


def build_module(config_yaml: str, spec: dict):
    """Rebuild a method from its stored config text and task spec (no weights loaded)."""
    cfg = from_yaml(config_yaml)
    method = registry.get("algorithm", cfg.algorithm.name)
    return method(TaskSpec.from_dict(spec), algorithm_params(cfg)), cfg


def load_checkpoint(path) -> dict:
    """A Lightning checkpoint of lightning_marl, loaded without executing anything in it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"cannot load checkpoint {path} safely (weights_only): {error}") from None
    if "lightning_marl" not in checkpoint:
        raise ConfigError(f"{path} is not a lightning_marl checkpoint (no 'lightning_marl' section)")
    return checkpoint


def load_policy(path, map_location="cpu") -> Policy:
    """The decentralised policy of a run directory, a policy.pt or a checkpoint (.ckpt)."""
    path = Path(path)
    if path.is_dir():
        path = path / "policy.pt"
    if not path.exists():
        raise ConfigError(f"no policy at {path}: pass a run directory, its policy.pt or a .ckpt")
    if path.suffix == ".ckpt":
        checkpoint = load_checkpoint(path)
        state = checkpoint["lightning_marl"]
        module, _ = build_module(state["config_yaml"], state["spec"])
        module.load_state_dict(checkpoint["state_dict"])
    else:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ConfigError(f"cannot load policy {path} safely (weights_only): {error}") from None
        if saved.get("format") != POLICY_FORMAT:
            raise ConfigError(f"{path} is not a lightning_marl policy file")
        module, _ = build_module(saved["config_yaml"], saved["spec"])
        missing, unexpected = module.load_state_dict(saved["state_dict"], strict=False)
        expected = set(_policy_state(module))
        if unexpected or expected & set(missing):
            raise ConfigError(f"{path}: policy tensors do not match the method ({sorted(expected & set(missing))[:3]} missing)")
    return Policy(module.to(map_location))
