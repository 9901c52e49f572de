import importlib.util

import pytest

from lightning_marl.envs import make_env
from lightning_marl.errors import ConfigError


@pytest.mark.skipif(importlib.util.find_spec("smacv2") is not None, reason="smacv2 is installed")
def test_without_starcraft_the_error_says_what_to_install():
    with pytest.raises(ConfigError, match="SC2PATH.*smacv2.*smax"):
        make_env("smac", "3m", num_envs=1)
