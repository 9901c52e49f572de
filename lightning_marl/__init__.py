"""lightning_marl: offline and offline-to-online cooperative multi-agent RL on PyTorch Lightning.

Example:
    >>> import lightning_marl
    >>> policy = lightning_marl.load_policy("runs/my-run")            # doctest: +SKIP
    >>> actions = policy.act(observation)                              # doctest: +SKIP
"""

__version__ = "0.1.0"


def load_policy(path, map_location="cpu"):
    """The decentralised policy of a run directory, policy.pt or checkpoint (see policy.py)."""
    from lightning_marl.policy import load_policy as _load

    return _load(path, map_location)


__all__ = ["load_policy", "__version__"]
