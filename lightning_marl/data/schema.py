"""The batch contract: the keys, dtypes and shapes every batch of lightning_marl has.

Read keys through these constants, never through string literals scattered in the code.
``validate_transitions`` checks a TensorDict of transitions and fails with a DatasetError that
names the key, the shape found and the shape expected.

Example:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> td = TensorDict({OBS: torch.zeros(4, 2, 3), ACTION: torch.zeros(4, 2, 1)}, [4])
    >>> td[OBS].shape
    torch.Size([4, 2, 3])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from tensordict import TensorDictBase

from lightning_marl.errors import DatasetError

GROUP = "agents"
OBS = (GROUP, "observation")
ACTION = (GROUP, "action")
ACTION_MASK = (GROUP, "action_mask")
AGENT_STATE = (GROUP, "state")
STATE = "state"
EPISODE = "episode"
MASK = "mask"  # slices [B, T] only: False on padding past an episode's end
IS_INIT = "is_init"  # slices [B, T] only: True at an episode's first step (TorchRL's name)
NEXT_OBS = ("next", GROUP, "observation")
NEXT_ACTION_MASK = ("next", GROUP, "action_mask")
NEXT_ACTION = ("next", GROUP, "action")  # optional: the next row's action (in-sample methods like ICQ)
NEXT_AGENT_STATE = ("next", GROUP, "state")
NEXT_STATE = ("next", "state")
AGENT_REWARD = ("next", GROUP, "reward")
REWARD = ("next", "reward")
TERMINATED = ("next", "terminated")
TRUNCATED = ("next", "truncated")
DONE = ("next", "done")
WON = ("next", "won")

SCHEMA_VERSION = 2  # 2: next-step fields stored once (data/next_steps.py); 1 stored them as arrays of their own
READABLE_SCHEMA_VERSIONS = (1, 2)

# Each next-step key and the key of the following row that (within an episode) holds its value.
NEXT_STEP_OF = {
    NEXT_OBS: OBS,
    NEXT_STATE: STATE,
    NEXT_AGENT_STATE: AGENT_STATE,
    NEXT_ACTION_MASK: ACTION_MASK,
    NEXT_ACTION: ACTION,
}


def key_name(key) -> str:
    """A key as users write it: ("next", "agents", "reward") -> "next.agents.reward"."""
    return ".".join(key) if isinstance(key, tuple) else key


@dataclass
class TaskSpec:
    """The shapes of a task: what a method needs to build its networks.

    Continuous actions are stored and produced in [-1, 1]; ``action_low``/``action_high`` are
    the environment's own bounds, used to rescale at execution.

    Example:
        >>> spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
        >>> TaskSpec.from_dict(spec.to_dict()) == spec
        True
    """

    n_agents: int
    obs_dim: int
    state_dim: int
    discrete: bool
    action_dim: int = 0
    n_actions: int = 0
    agent_state_dim: int = 0
    action_low: list = field(default_factory=list)
    action_high: list = field(default_factory=list)
    agent_names: list = field(default_factory=list)

    def __post_init__(self):
        if self.discrete and self.n_actions < 1:
            raise DatasetError("a discrete task spec needs n_actions >= 1")
        if not self.discrete and self.action_dim < 1:
            raise DatasetError("a continuous task spec needs action_dim >= 1")
        if not self.discrete:
            self.action_low = list(self.action_low) or [-1.0] * self.action_dim
            self.action_high = list(self.action_high) or [1.0] * self.action_dim
        self.agent_names = list(self.agent_names) or [f"agent_{i}" for i in range(self.n_agents)]

    @property
    def action_width(self) -> int:
        """Output size of a per-agent policy head: n_actions (discrete) or action_dim."""
        return self.n_actions if self.discrete else self.action_dim

    @property
    def mixer_state_dim(self) -> int:
        """Input size of a mixer: the concatenated per-agent states if present, else the state."""
        return self.n_agents * self.agent_state_dim if self.agent_state_dim else self.state_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TaskSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DatasetError(f"unknown task spec fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def expected_shapes(spec: TaskSpec) -> dict:
    """Key -> (dtype, shape without the batch dimension) for a task spec.

    Optional keys (per-agent state and reward, won) are included; ``validate_transitions``
    only checks them when present.
    """
    n, o, s = spec.n_agents, spec.obs_dim, spec.state_dim
    shapes = {
        OBS: (torch.float32, (n, o)),
        NEXT_OBS: (torch.float32, (n, o)),
        STATE: (torch.float32, (s,)),
        NEXT_STATE: (torch.float32, (s,)),
        REWARD: (torch.float32, (1,)),
        AGENT_REWARD: (torch.float32, (n, 1)),
        TERMINATED: (torch.bool, (1,)),
        TRUNCATED: (torch.bool, (1,)),
        DONE: (torch.bool, (1,)),
        WON: (torch.bool, (1,)),
        EPISODE: (torch.int64, ()),
    }
    if spec.discrete:
        k = spec.n_actions
        shapes[ACTION] = shapes[NEXT_ACTION] = (torch.int64, (n,))
        shapes[ACTION_MASK] = (torch.bool, (n, k))
        shapes[NEXT_ACTION_MASK] = (torch.bool, (n, k))
    else:
        shapes[ACTION] = shapes[NEXT_ACTION] = (torch.float32, (n, spec.action_dim))
    if spec.agent_state_dim:
        shapes[AGENT_STATE] = (torch.float32, (n, spec.agent_state_dim))
        shapes[NEXT_AGENT_STATE] = (torch.float32, (n, spec.agent_state_dim))
    return shapes


REQUIRED = (OBS, NEXT_OBS, STATE, NEXT_STATE, ACTION, REWARD, TERMINATED, TRUNCATED, DONE, EPISODE)
OPTIONAL = (AGENT_REWARD, WON, AGENT_STATE, NEXT_AGENT_STATE, NEXT_ACTION)


def validate_transitions(td: TensorDictBase, spec: TaskSpec, where: str = "dataset") -> None:
    """Check that ``td`` (batch [T]) follows the contract for ``spec``; raise DatasetError if not.

    Discrete tasks also require the action masks. Continuous actions must lie in [-1, 1].
    """
    if td.batch_dims != 1:
        raise DatasetError(f"{where}: transitions must have one batch dimension, found {td.batch_size}")
    shapes = expected_shapes(spec)
    required = list(REQUIRED) + ([ACTION_MASK, NEXT_ACTION_MASK] if spec.discrete else [])
    present = set(td.keys(include_nested=True, leaves_only=True))
    for key in required:
        if key not in present:
            raise DatasetError(
                f"{where}: missing key {key_name(key)!r} (expected {shapes[key][0]} of shape "
                f"[T, {', '.join(map(str, shapes[key][1]))}]). Keys found: "
                f"{sorted(key_name(k) for k in present)}"
            )
    for key, (dtype, shape) in shapes.items():
        if key not in present:
            continue
        value = td.get(key)
        if tuple(value.shape[1:]) != shape:
            raise DatasetError(
                f"{where}: key {key_name(key)!r} has shape {list(value.shape)}, expected "
                f"[{value.shape[0]}, {', '.join(map(str, shape))}] for {spec.n_agents} agents "
                f"(obs {spec.obs_dim}, state {spec.state_dim})"
            )
        if value.dtype != dtype:
            raise DatasetError(f"{where}: key {key_name(key)!r} has dtype {value.dtype}, expected {dtype}")
    # Value checks run over row chunks: a 10M-row memory map is never materialised (nor copied) at once.
    for start in range(0, td.shape[0], VALIDATION_CHUNK):
        _validate_values(td[start:start + VALIDATION_CHUNK], spec, where)


VALIDATION_CHUNK = 1 << 16


def _validate_values(td: TensorDictBase, spec: TaskSpec, where: str) -> None:
    for key in (OBS, NEXT_OBS, STATE, NEXT_STATE, REWARD):
        if not torch.isfinite(td.get(key)).all():
            raise DatasetError(f"{where}: key {key_name(key)!r} holds NaN or inf values")
    if not spec.discrete:
        action = td.get(ACTION)
        if action.numel() and (action.abs().max() > 1.0 + 1e-6 or not torch.isfinite(action).all()):
            raise DatasetError(
                f"{where}: continuous actions must be rescaled to [-1, 1] (found max |a| = "
                f"{action.abs().max().item():.3g}); the env's bounds belong in the metadata"
            )
    else:
        action = td.get(ACTION)
        if action.numel() and (action.min() < 0 or action.max() >= spec.n_actions):
            raise DatasetError(f"{where}: discrete actions must be indices in [0, {spec.n_actions})")
        chosen_available = td.get(ACTION_MASK).gather(-1, action.unsqueeze(-1))
        if not chosen_available.all():
            raise DatasetError(f"{where}: some dataset actions are marked unavailable by action_mask")
    done = td.get(DONE)
    if not torch.equal(done, td.get(TERMINATED) | td.get(TRUNCATED)):
        raise DatasetError(f"{where}: next.done must equal next.terminated | next.truncated")
