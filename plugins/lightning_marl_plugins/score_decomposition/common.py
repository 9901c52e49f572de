"""What the score plugins share: per-dataset beta defaults."""

from __future__ import annotations

from lightning_marl.errors import PluginError

BETA_BY_QUALITY = {"expert": 0.001, "random": 0.3}
BETA_OTHERWISE = 0.01  # medium, mixed and unlabelled data [choice, METHODS.md §2]


def default_beta(quality: str | None) -> float:
    """beta from a dataset's quality label: 0.001 expert, 0.3 random, 0.01 otherwise.

    Example:
        >>> default_beta("expert"), default_beta("random"), default_beta("mixed"), default_beta(None)
        (0.001, 0.3, 0.01, 0.01)
    """
    return BETA_BY_QUALITY.get(str(quality).lower(), BETA_OTHERWISE)


def dataset_quality(datamodule) -> str | None:
    """The quality label in the metadata of the datamodule's dataset (None if unknown)."""
    dataset = getattr(datamodule, "dataset", None)
    return (getattr(dataset, "metadata", None) or {}).get("quality")


def resolve_beta(beta: float | None, datamodule) -> float:
    """The configured beta, else the default for the dataset's quality label."""
    if beta is not None:
        if beta <= 0:
            raise PluginError(f"beta must be > 0 (the regulariser is weighted by 1/beta), got {beta}")
        return float(beta)
    return default_beta(dataset_quality(datamodule))
