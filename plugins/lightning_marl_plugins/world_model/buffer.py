"""A fixed-capacity ring buffer of synthetic transitions with an uncertainty-weighted sampler.

Rows are stored as one preallocated tensor per key (allocated on the first ``extend``); the
oldest rows are overwritten first. Each row carries its uncertainty u; ``sample`` draws row
indices with replacement through ``torch.multinomial`` with weights

    w = exp(clip(C - u, 0, C))          (LOGO; normalised over the filled rows)

or uniform weights when weighting is off (the MOPO baseline). The weights are recomputed once per
``extend``, so a draw costs one multinomial and one gather per key. (TorchRL's prioritized
sampler does not load with torch 2.13, see FACTS.md.)
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

UNCERTAINTY = "uncertainty"


def uncertainty_weights(uncertainty: torch.Tensor, threshold: float) -> torch.Tensor:
    """exp(clip(C - u, 0, C)) up to a constant factor exp(-C) (for range): rows with u >= C get
    exp(-C), the most certain rows (u = 0) get 1.

    Example:
        >>> uncertainty_weights(torch.tensor([0.0, 1.0, 2.0, 5.0]), threshold=2.0)
        tensor([1.0000, 0.3679, 0.1353, 0.1353])
    """
    c = float(threshold)
    return torch.exp((c - uncertainty).clamp(0.0, c) - c)


class SyntheticBuffer:
    """Synthetic transitions (TensorDict rows of the batch contract plus ``uncertainty``) in a ring.

    Example:
        >>> buf = SyntheticBuffer(capacity=4, threshold=1.0, weighted=True)
        >>> rows = TensorDict({"x": torch.arange(6.0), UNCERTAINTY: torch.tensor([0., 0, 0, 0, 9, 9])}, [6])
        >>> buf.extend(rows[:3]); buf.extend(rows[3:])
        >>> len(buf), buf.data["x"].tolist()                       # the two oldest rows overwritten
        (4, [4.0, 5.0, 2.0, 3.0])
        >>> buf.rows(buf.sample(3, torch.Generator().manual_seed(0)), ["x"]).batch_size
        torch.Size([3])
    """

    def __init__(self, capacity: int, threshold: float = 0.0, weighted: bool = True):
        self.capacity = int(capacity)
        self.threshold = float(threshold)
        self.weighted = weighted
        self.data: dict = {}
        self.count = 0
        self.cursor = 0
        self.weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.count

    def extend(self, rows: TensorDictBase) -> None:
        """Append rows [R] (the newest ``capacity`` rows are kept)."""
        rows = rows[-self.capacity:]
        n = rows.shape[0]
        if n == 0:
            return
        if not self.data:
            for key, value in rows.items(include_nested=True, leaves_only=True):
                self.data[key] = torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype, device=value.device)
        index = (self.cursor + torch.arange(n, device=rows.device)) % self.capacity
        for key, store in self.data.items():
            store[index] = rows.get(key).to(store.device)
        self.cursor = (self.cursor + n) % self.capacity
        self.count = min(self.count + n, self.capacity)
        self._reweight()

    def _reweight(self) -> None:
        u = self.data[UNCERTAINTY][:self.count]
        self.weights = uncertainty_weights(u, self.threshold) if self.weighted else torch.ones_like(u)

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)
        if self.count:
            self._reweight()

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` row indices drawn with replacement, P(row) ∝ its weight."""
        return torch.multinomial(self.weights, n, replacement=True, generator=generator)

    def rows(self, index: torch.Tensor, keys) -> TensorDict:
        """The rows at ``index`` restricted to ``keys`` (a TensorDict [len(index)])."""
        return TensorDict({key: self.data[key][index] for key in keys}, batch_size=[index.shape[0]],
                          device=index.device)

    # ---- state (tensors and plain data: checkpoints load with weights_only=True) -------------
    def state_dict(self) -> dict:
        return {
            "count": self.count, "cursor": self.cursor, "threshold": self.threshold,
            "keys": [list(key) if isinstance(key, tuple) else [key] for key in self.data],
            "values": [value[:self.count].clone() if self.count < self.capacity else value for value in self.data.values()],
        }

    def load_state_dict(self, state: dict, device=None) -> None:
        self.count, self.cursor, self.threshold = int(state["count"]), int(state["cursor"]), float(state["threshold"])
        self.data = {}
        for key, value in zip(state["keys"], state["values"]):
            key = tuple(key) if len(key) > 1 else key[0]
            store = torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype, device=device)
            store[:value.shape[0]] = value.to(device)
            self.data[key] = store
        if self.count:
            self._reweight()
