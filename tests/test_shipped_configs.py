"""Every config shipped in lightning_marl/configs loads with the loader it is written for."""

import pytest

from lightning_marl.collect.config import check_collect_config, load_collect_config
from lightning_marl.collect.recipes import RECIPES
from lightning_marl.config import load_config, shipped_configs

OTHER_LOADERS = ("collect/", "suites/")  # collect configs below; suites are checked by tests/benchmarking
RUN_CONFIGS = [name for name in shipped_configs() if not name.startswith(OTHER_LOADERS)]


def test_the_built_in_recipes_have_base_configs():
    for method in ("omiga", "bc", "iql", "matd3bc", "macql", "omar"):
        assert f"{method}/vmas_navigation" in RUN_CONFIGS
    for method in ("omiga", "bc", "qmix_cql", "cfcql", "icq", "iql"):
        assert f"{method}/climbing" in RUN_CONFIGS
    for name in ("qmix_cql", "qmix_cql/smax_3m_recurrent", "cfcql", "icq", "bc", "omiga"):
        assert (name if "/" in name else f"{name}/smax_3m") in RUN_CONFIGS


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_run_config_loads(name):
    cfg = load_config(name)
    method = name.split("/")[0]
    if method not in ("default", "finetune"):
        assert cfg.algorithm.name == method
    recipe = cfg.data.get("recipe")
    assert recipe is None or recipe in RECIPES
    if recipe == "smax_3m":
        assert cfg.env.name == "dataset" and cfg.eval.episodes >= 32
        assert cfg.algorithm.get("recurrent", False) == name.endswith("_recurrent")


@pytest.mark.parametrize("name", [name for name in shipped_configs() if name.startswith("collect/")])
def test_collect_config_loads(name):
    check_collect_config(load_collect_config(name))
