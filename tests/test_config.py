import pytest

from lightning_marl.config import find_config, load_config, shipped_configs
from lightning_marl.errors import ConfigError


def test_defaults_come_from_the_method_dataclass():
    cfg = load_config(None, ["algorithm.name=omiga", "data.path=/x"])
    assert cfg.algorithm.alpha == 10.0 and cfg.algorithm.lr == 5e-4 and cfg.algorithm.batch_size == 128
    bc = load_config(None, ["algorithm.name=bc", "data.path=/x"])
    assert bc.algorithm.lr == 3e-4 and "alpha" not in bc.algorithm


def test_shipped_config_by_name_and_dot_list_overrides():
    assert "default" in shipped_configs() and "omiga/vmas_navigation" in shipped_configs()
    cfg = load_config("omiga/vmas_navigation", ["algorithm.alpha=1.0", "trainer.devices=2", "eval.every=7"])
    assert cfg.algorithm.alpha == 1.0 and cfg.trainer.devices == 2 and cfg.eval.every == 7
    assert cfg.env.name == "dataset" and cfg.env.num_envs == 32
    assert find_config("omiga/vmas_navigation").name == "vmas_navigation.yaml"


def test_yaml_file_path(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algorithm:\n  name: bc\n  steps: 5\ndata:\n  path: /d\n")
    cfg = load_config(str(path), ["seed=3"])
    assert (cfg.algorithm.name, cfg.algorithm.steps, cfg.seed) == ("bc", 5, 3)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algorithm.alpah=1.0", r"'algorithm\.alpah'.*Did you mean algorithm\.alpha"),
        ("algorithm.stesp=3", r"algorithm\.stesp.*algorithm\.steps"),
        ("evl.every=3", r"'evl'.*Did you mean eval"),
        ("data.pth=/x", r"data\.pth.*data\.path"),
        ("env.tsk=navigation", r"env\.tsk.*env\.task"),
        ("trainer.devcies=2", r"trainer\.devcies.*trainer\.devices"),
        ("plugins.0.nme=x", r"plugins is a list; plugins\.0"),
    ],
)
def test_misspelt_keys_name_the_closest_valid_ones(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("omiga/vmas_navigation", [override])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algorithm.steps=many", r"algorithm\.steps"),
        ("algorithm.alpha=[1,2]", r"algorithm\.alpha"),
        ("seed=abc", r"seed"),
        ("deterministic=maybe", r"deterministic"),
        ("logger=wandb", r"logger must be one of"),
        ("iterations_per_batch=0", r"iterations_per_batch must be >= 1 \(1: one iteration per Lightning batch\)"),
        ("data.warm_page_cache=sometimes", r"data\.warm_page_cache must be auto, true or false, found 'sometimes'"),
    ],
)
def test_wrong_types_are_refused(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("omiga/vmas_navigation", [override])


@pytest.mark.parametrize("key, owner", [("max_steps", "algorithm.steps"), ("logger", "logger"),
                                        ("deterministic", "deterministic"), ("default_root_dir", "run_dir")])
def test_trainer_keys_owned_elsewhere_point_to_their_owner(key, owner):
    with pytest.raises(ConfigError, match=rf"trainer\.{key}.*{owner}"):
        load_config("omiga/vmas_navigation", [f"trainer.{key}=1"])


def test_unknown_algorithm_and_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"no algorithm named 'omgia'.*Did you mean omiga"):
        load_config(None, ["algorithm.name=omgia"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["algorithm.alpha"])
    with pytest.raises(ConfigError, match="no config file"):
        load_config("omiga/nowhere", [])


def test_unknown_plugin_is_refused_before_work():
    with pytest.raises(ConfigError, match="no plugin named 'nope'"):
        load_config("omiga/vmas_navigation", ["plugins=[{name: nope}]"])


def test_list_items_are_overridden_by_index(tmp_path):
    from dataclasses import dataclass

    from lightning_marl.plugin import Plugin
    from lightning_marl.registry import register

    @register("plugin", "test_scale_target")
    class ScaleTarget(Plugin):
        """Scales the TD target (test plugin)."""

        @dataclass
        class Params:
            beta: float = 1.0

        def critic_target(self, batch, target, module):
            return self.params.beta * target

    path = tmp_path / "run.yaml"
    path.write_text("data: {path: /d}\nplugins:\n  - name: test_scale_target\n")
    cfg = load_config(str(path), ["plugins.0.params.beta=0.1"])
    assert cfg.plugins[0].params.beta == 0.1
    with pytest.raises(ConfigError, match=r"plugins\.0\.params\.bta.*plugins\.0\.params\.beta"):
        load_config(str(path), ["plugins.0.params.bta=0.1"])
    with pytest.raises(ConfigError, match=r"plugins\.0\.params\.beta"):
        load_config(str(path), ["plugins.0.params.beta=high"])


def test_section_replacement_and_dataset_source_exclusion():
    cfg = load_config("omiga/vmas_navigation", ["env={name: matrix, task: climbing}", "data.path=/d"])
    assert cfg.env.name == "matrix" and cfg.env.params == {} and cfg.env.max_steps is None
    assert cfg.data.path == "/d" and cfg.data.recipe is None
    edited = load_config("omiga/vmas_navigation", ["env.num_envs=4"])
    assert edited.env.num_envs == 4 and edited.env.name == "dataset"
