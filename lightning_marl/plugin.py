"""The Plugin base class: components that methods call at fixed points of training.

A plugin implements any of the hooks below; each does nothing by default. A method declares
which hooks it calls (``Method.hooks``); configuring a plugin that implements a hook the method
does not call fails at start-up with a PluginError naming both. ``setup``, ``pretrain`` and the
state hooks are always called.

Hook signatures (the public API every plugin builds on):

=====================================================  ========================================
hook                                                   called / returns
=====================================================  ========================================
``setup(module, datamodule)``                          once before training / None
``pretrain(datamodule, module)``                       once before training, on every rank with
                                                       the same seed and data / None
``augment_batch(batch, module)``                       every step before the losses / a batch
                                                       of the same size
``actor_regulariser(batch, actions, module, agent)``   in the actor update / a score [B, N, A]
``critic_target(batch, target, module)``               in the critic loss / a new target of the
                                                       same shape: [B, 1] (mixed critics) or
                                                       [B, N] (per-agent critics)
``explore(td, module)``                                in online collection only / actions
``state_dict()`` / ``load_state_dict(state)``          with checkpoints (tensors and plain data)
=====================================================  ========================================

Example:
    >>> from dataclasses import dataclass
    >>> from lightning_marl.registry import register
    >>> @register("plugin", "scaled_target")
    ... class ScaledTarget(Plugin):
    ...     '''Scales the critic's TD target (a toy).'''
    ...     @dataclass
    ...     class Params:
    ...         scale: float = 1.0
    ...     def critic_target(self, batch, target, module):
    ...         return self.params.scale * target
    >>> ScaledTarget(ScaledTarget.Params(scale=0.5)).implemented_hooks()
    ('critic_target',)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase

from lightning_marl.errors import PluginError

HOOKS = ("setup", "pretrain", "augment_batch", "actor_regulariser", "critic_target", "explore")
ALWAYS_CALLED = ("setup", "pretrain")


class Plugin:
    """Base class of plugins. Subclasses set ``Params`` (a dataclass) and override hooks."""

    @dataclass
    class Params:
        pass

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def implemented_hooks(cls) -> tuple[str, ...]:
        """The hooks this plugin overrides."""
        return tuple(hook for hook in HOOKS if getattr(cls, hook) is not getattr(Plugin, hook))

    def setup(self, module, datamodule) -> None:
        """Called once before training (and before ``pretrain``)."""

    def pretrain(self, datamodule, module) -> None:
        """Called once before training on every rank; fit models from the data here."""

    def augment_batch(self, batch, module):
        """Return a batch of the same size mixing real and synthetic rows."""
        return batch

    def actor_regulariser(self, batch, actions, module, agent=None):
        """Return the direction [B, N, A] the regulariser wants each action to move."""
        raise NotImplementedError

    def critic_target(self, batch, target, module):
        """Return a new TD target [B, 1] given the method's target."""
        return target

    def explore(self, td, module):
        """Return the actions to execute during online collection."""
        return td

    def state_dict(self) -> dict:
        """Plugin state saved with checkpoints: tensors and plain Python data only."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


def training_data(data):
    """The data a plugin pretrains on: a DataModule's Dataset, a Dataset, or a TensorDict of
    transitions, as it is; anything else is refused with a PluginError."""
    dataset = getattr(data, "dataset", data)
    if isinstance(dataset, TensorDictBase) or (hasattr(dataset, "rows") and hasattr(dataset, "arrays")):
        return dataset
    raise PluginError(
        f"pretraining needs the training data, got {type(data).__name__}; pass the run's DataModule, "
        "a Dataset or a TensorDict of transitions"
    )


class TrainingRows:
    """The training data's rows, read on demand: what a plugin that pretrains on random rows (a
    world model) holds instead of every transition at once. Over a Dataset it reads only the rows
    and keys asked for from the memory-mapped arrays (``Dataset.rows``), so a dataset that stores
    next-step fields once (data/next_steps.py) never gathers them whole; over a TensorDict it
    indexes it.

    Example:
        >>> from tensordict import TensorDict
        >>> data = TrainingRows(TensorDict({"a": torch.arange(5.0), "b": torch.ones(5)}, [5]))
        >>> len(data), data.rows(torch.tensor([4, 1]), ["a"])["a"].tolist()
        (5, [4.0, 1.0])
    """

    def __init__(self, data):
        self.source = training_data(data)

    def __len__(self) -> int:
        return len(self.source)

    def column(self, key) -> torch.Tensor:
        """One key for every row (a key stored per row: e.g. the episode ids)."""
        if isinstance(self.source, TensorDictBase):
            return self.source.get(key)
        if key in set(self.source.arrays.keys(True, True)):
            return self.source.arrays.get(key)
        return self.source.rows(torch.arange(len(self.source)), [key]).get(key)

    def rows(self, index: torch.Tensor, keys) -> TensorDictBase:
        """Rows ``index`` with those of ``keys`` that the data has."""
        if isinstance(self.source, TensorDictBase):
            return transitions_of(self.source, keys)[index]
        return self.source.rows(index, keys)


def transitions_of(data, keys=None) -> TensorDictBase:
    """The transitions [T] a plugin pretrains on: those of a DataModule (``.dataset.transitions``),
    of a Dataset (``.transitions``), or a TensorDict of transitions itself. With ``keys``, only
    those of them that the data has: a dataset that stores next-step fields once (data/next_steps.py)
    then hands over its memory-mapped arrays without gathering next-step fields nobody asked for.

    Example:
        >>> from tensordict import TensorDict
        >>> transitions = TensorDict({}, [5])
        >>> transitions_of(transitions) is transitions
        True
        >>> import torch
        >>> list(transitions_of(TensorDict({"a": torch.zeros(5), "b": torch.ones(5)}, [5]), keys=["a", "c"]).keys())
        ['a']
    """
    transitions = training_data(data)
    if not isinstance(transitions, TensorDictBase):  # a Dataset
        if keys is not None and not set(keys) & set(transitions.next_sources):
            transitions = transitions.arrays
        else:
            transitions = transitions.transitions
    if keys is None:
        return transitions
    present = set(transitions.keys(True, True))
    return transitions.select(*[key for key in keys if key in present])
