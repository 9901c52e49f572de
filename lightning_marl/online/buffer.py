"""The online replay buffer: a TorchRL ring buffer whose contents travel in checkpoints."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import RandomSampler

from lightning_marl.data.schema import key_name


def _key(name: str):
    parts = tuple(name.split("."))
    return parts if len(parts) > 1 else parts[0]


class OnlineBuffer:
    """The last ``capacity`` online transitions (TensorDict rows of the batch contract), sampled
    uniformly with replacement by a generator the caller seeds.

    ``state_dict()`` holds plain tensors keyed by dotted names and the write cursor, so a
    checkpoint with the buffer still loads with ``torch.load(weights_only=True)``.

    Example:
        >>> buffer = OnlineBuffer(capacity=4)
        >>> buffer.extend(TensorDict({"state": torch.arange(6.0).unsqueeze(-1)}, [6]))
        >>> len(buffer), sorted(buffer.contents()["state"].squeeze(-1).tolist())
        (4, [2.0, 3.0, 4.0, 5.0])
        >>> restored = OnlineBuffer(capacity=4); restored.load_state_dict(buffer.state_dict())
        >>> torch.equal(restored.contents()["state"], buffer.contents()["state"])
        True
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.generator = torch.Generator()
        self.buffer = ReplayBuffer(storage=LazyTensorStorage(capacity), sampler=RandomSampler(),
                                   generator=self.generator)

    def __getstate__(self) -> dict:  # pickled for spawned processes (ddp_spawn) through its plain state
        return {"capacity": self.capacity, "state": self.state_dict()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])
        self.load_state_dict(state["state"])

    def __len__(self) -> int:
        return len(self.buffer)

    def extend(self, transitions: TensorDict) -> None:
        self.buffer.extend(transitions)

    def contents(self) -> TensorDict:
        """Every stored row (storage order, not time order)."""
        return self.buffer.storage[: len(self)]

    def sample(self, batch_size: int, seed: int) -> TensorDict:
        """``batch_size`` rows drawn uniformly with replacement, a pure function of ``seed`` and the contents."""
        self.generator.manual_seed(seed)
        return self.buffer.sample(batch_size)

    def state_dict(self) -> dict:
        if not len(self):
            return {"data": {}, "writer": {}}
        data = self.contents()
        return {
            "data": {key_name(k): data.get(k).clone() for k in data.keys(include_nested=True, leaves_only=True)},
            "writer": {k: int(v) for k, v in self.buffer.writer.state_dict().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.buffer = ReplayBuffer(storage=LazyTensorStorage(self.capacity), sampler=RandomSampler(),
                                   generator=self.generator)
        if not state.get("data"):
            return
        first = next(iter(state["data"].values()))
        if first.shape[0] > self.capacity:
            raise ValueError(f"the saved buffer holds {first.shape[0]} rows, more than online.buffer_size={self.capacity}")
        data = TensorDict({_key(name): value for name, value in state["data"].items()}, [first.shape[0]])
        self.buffer.extend(data)
        self.buffer.writer.load_state_dict(state["writer"])
