"""Next-step fields stored once: the value of ``("next", K)`` in row t is usually ``K`` of row t + 1.

A dataset on disk (schema version 2) stores each such pair once. The array of ``K`` holds its T
rows followed by F more: the next-step values of the *final rows*, the rows t whose
``("next", K)`` differs from ``K`` of row t + 1 for some pair (an episode's last step, whose next
observation is the terminal one and not the next episode's first) and the dataset's last row.
Every other row's next-step value is the following row of the same array. The layout is
lossless (``final_rows`` is computed by comparing values, not assumed from episode ids), halves
the bytes of the observation and state fields, and puts a row and its successor side by side, so
a batch touches about half as many pages of a cold page cache. In the same spirit, a key of
``VIEW_CANDIDATES`` whose stored rows equal another key's (the state of a task whose state is
the agents' observations concatenated) is stored as a reshaped view of that key's file.

Example:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> obs = torch.tensor([[0.0], [1.0], [5.0], [6.0]])
    >>> td = TensorDict({"o": obs, ("next", "o"): torch.tensor([[1.0], [2.0], [6.0], [7.0]])}, [4])
    >>> final = final_rows(td, {("next", "o"): "o"})
    >>> final
    tensor([1, 3])
    >>> stored = torch.cat([obs, td["next", "o"][final]])       # what the file holds
    >>> steps = NextSteps(final, n_rows=4)
    >>> stored[steps.positions(torch.arange(4))].squeeze(-1)    # = td["next", "o"]
    tensor([1., 2., 6., 7.])
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from lightning_marl.data import schema

CHUNK = 1 << 16


def stored_pairs(keys) -> dict:
    """{next-step key: the key whose array stores it} for the pairs both present in ``keys``."""
    keys = set(keys)
    return {nxt: own for nxt, own in schema.NEXT_STEP_OF.items() if nxt in keys and own in keys}


def final_rows(transitions: TensorDictBase, pairs: dict, chunk: int = CHUNK) -> torch.Tensor:
    """Sorted rows t (int64) whose next-step value differs from row t + 1's for some pair in ``pairs``,
    and the last row. Compared in chunks of rows (bit for bit, so NaN payloads count as different)."""
    n = transitions.shape[0]
    found = []
    for start in range(0, max(n - 1, 0), chunk):
        stop = min(n - 1, start + chunk)
        differs = torch.zeros(stop - start, dtype=torch.bool)
        for nxt, own in pairs.items():
            following = transitions.get(own)[start + 1:stop + 1]
            value = transitions.get(nxt)[start:stop]
            differs |= _differs(value, following)
        found.append(differs.nonzero().squeeze(-1) + start)
    if n:
        found.append(torch.tensor([n - 1]))
    return torch.cat(found).to(torch.int64) if found else torch.zeros(0, dtype=torch.int64)


# Keys whose values are often another key's, reshaped: the state of many tasks is the agents'
# observations concatenated (all built-in recipes). Such a key is stored as a view of the other's file.
VIEW_CANDIDATES = {schema.STATE: schema.OBS}


def views_of(transitions: TensorDictBase, pairs: dict, final: torch.Tensor, chunk: int = CHUNK) -> dict:
    """{key: the key whose stored array it is a reshaped view of}, for the ``VIEW_CANDIDATES`` whose
    every stored row (the T rows and, when the key stores its next-step values, those of the final
    rows) equals the other key's bit for bit."""
    keys = set(transitions.keys(True, True))
    next_of = {own: nxt for nxt, own in pairs.items()}
    views = {}
    for key, source in VIEW_CANDIDATES.items():
        if key not in keys or source not in keys or (key in next_of) != (source in next_of):
            continue
        value, base = transitions.get(key), transitions.get(source)
        if value.dtype != base.dtype or value.shape[1:].numel() != base.shape[1:].numel():
            continue
        checks = [(value, base)]
        if key in next_of:
            checks.append((transitions.get(next_of[key]).index_select(0, final),
                           transitions.get(next_of[source]).index_select(0, final)))
        if all(not _differs(a[start:start + chunk], b[start:start + chunk]).any()
               for a, b in checks for start in range(0, len(a), chunk)):
            views[key] = source
    return views


def _differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, whether ``a`` and ``b`` differ in any element, compared as raw bytes."""
    rows = a.shape[0]
    a, b = a.contiguous().reshape(rows, -1), b.contiguous().reshape(rows, -1)
    if a.dtype.is_floating_point:
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.view(view), b.view(view)
    return (a != b).any(-1).cpu()


class NextSteps:
    """Where row t's next-step value lies in a stored array of T + F rows: row t + 1, or, for the
    j-th final row, row T + j.

    ``positions`` reads them from a table of every row's position, built from the final rows on
    first use (4 bytes a row, in memory: 40 MB at 10M rows): one gather a batch, where finding
    each row among the final rows took six small operations, ~23 µs a batch of 128.

    Example:
        >>> NextSteps(torch.tensor([1, 3]), n_rows=4).positions(torch.tensor([0, 1, 2, 3]))
        tensor([1, 4, 3, 5], dtype=torch.int32)
    """

    def __init__(self, final: torch.Tensor, n_rows: int):
        self.final = final
        self.n_rows = n_rows
        self._table = None

    def __len__(self) -> int:
        return len(self.final)

    def to(self, device) -> "NextSteps":
        moved = NextSteps(self.final.to(device), self.n_rows)
        moved._table = self.table.to(device)
        return moved

    @property
    def table(self) -> torch.Tensor:
        """Every row's next-step position (int32 while they fit, else int64)."""
        if self._table is None:
            size = self.n_rows + len(self.final)
            dtype = torch.int32 if size < 2**31 else torch.int64
            table = torch.arange(1, self.n_rows + 1, dtype=dtype, device=self.final.device)
            table[self.final.as_subclass(torch.Tensor)] = torch.arange(
                self.n_rows, size, dtype=dtype, device=self.final.device)
            self._table = table
        return self._table

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """Positions (same shape as ``index``; int32 or int64) of the next-step values of rows ``index``."""
        return torch.index_select(self.table, 0, index.reshape(-1)).reshape(index.shape)
