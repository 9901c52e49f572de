"""The project's exception types.

Every error a user can cause (bad config, bad dataset, incompatible plugin) is raised as one of
these, with a message that says what was found, what was expected and what to do. The CLI prints
them without a traceback unless ``--debug`` is given.
"""


class LightningMarlError(Exception):
    """Base class of every error lightning_marl raises on purpose."""


class ConfigError(LightningMarlError):
    """A configuration key, value or type that cannot be used."""


class DatasetError(LightningMarlError):
    """A dataset that is missing, truncated, corrupt or does not follow the batch contract."""


class PluginError(LightningMarlError):
    """A plugin that cannot be found or that the chosen method cannot use."""


class TrainingError(LightningMarlError):
    """Training cannot go on (for example a loss became NaN)."""
