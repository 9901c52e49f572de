"""fit, then `finetune --from RUN_DIR` end to end through the CLI: env steps, eval.json, the
checkpoint (weights_only, online buffer, env-step counter, the value memory) and resume."""

import json

import lightning as L
import pytest
import torch

from lightning_marl import cli
from lightning_marl.online import finetune, finetune_config

BUDGET, FRAMES, UPDATES = 320, 40, 4  # 8 collections of 40 env steps, 32 iterations


class CrashAt(L.Callback):
    """Stands in for a killed process: dies right after the checkpoint at ``iteration``."""

    def __init__(self, iteration):
        self.iteration = iteration

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.iteration == self.iteration:
            raise RuntimeError("killed (simulated)")


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, climbing_dataset):
    run_dir = tmp_path_factory.mktemp("offline") / "run"
    assert cli.main([
        "fit", "algorithm.name=qmix_cql", "algorithm.steps=20", "algorithm.batch_size=32", "algorithm.hidden=[16,16]",
        "algorithm.mixer_embed=8", f"data.path={climbing_dataset.path}", "env.name=dataset", "env.num_envs=4",
        "eval.episodes=8", f"run_dir={run_dir}", "progress=false", "log_every=10",
    ]) == 0
    return run_dir


def _overrides(run_dir):
    return [
        f"online.env_steps={BUDGET}", "online.num_envs=4", f"online.frames_per_batch={FRAMES}",
        f"online.updates_per_collection={UPDATES}", "online.buffer_size=200", "online.offline_ratio=0.25",
        "plugins.0.params.anneal_env_steps=320", "plugins.1.params.anneal_env_steps=160",
        "plugins.1.params.start=0.5", "algorithm.lr=0.01", "eval.every=8", "eval.episodes=8", "env.num_envs=4",
        f"run_dir={run_dir}", "progress=false", "log_every=4", "checkpoint_every=8", "seed=1",
    ]


def _checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_finetune_from_a_fit_run_directory(tmp_path, offline_run, capsys):
    run_dir = tmp_path / "online"
    assert cli.main(["finetune", "--from", str(offline_run), "--config", "finetune/ovmse", *_overrides(run_dir)]) == 0
    assert "env steps          320" in capsys.readouterr().out

    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["env_steps"] == BUDGET and evaluation["iteration"] == BUDGET // FRAMES * UPDATES
    assert [e["env_steps"] for e in evaluation["history"]] == [0, 80, 160, 240, 320]
    assert evaluation["history"][0]["iteration"] == 0  # the offline policy, evaluated before any online step
    offline_final = json.loads((offline_run / "eval.json").read_text())["final"]["return_mean"]
    assert evaluation["history"][0]["return_mean"] == offline_final
    assert evaluation["env_steps_per_s"] > 0 and evaluation["online_episodes"] == BUDGET  # one-step episodes

    checkpoint = _checkpoint(run_dir)  # tensors and plain data only
    state = checkpoint["lightning_marl"]
    assert state["env_steps"] == BUDGET and state["iteration"] == 32
    assert "init:" in state["config_yaml"] and "offline_ratio: 0.25" in state["config_yaml"]
    buffer = checkpoint["OnlineDataModule"]["buffer"]
    assert buffer["data"]["agents.action"].shape == (200, 2) and buffer["writer"]["_write_count"] == BUDGET
    assert checkpoint["OnlineDataModule"]["env_steps"] == BUDGET
    # the value memory holds the OFFLINE agent network, while the fine-tuned one moved away from it
    offline_q = _checkpoint(offline_run)["state_dict"]
    memory = state["plugins"][0]["agent_net"]
    for name, value in memory.items():
        assert torch.equal(value, offline_q[f"q.{name}"]), name
    assert any(not torch.equal(checkpoint["state_dict"][f"q.{n}"], v) for n, v in memory.items())


def test_resumed_finetune_ends_like_an_uninterrupted_one(tmp_path, offline_run):
    full = tmp_path / "full"
    finetune(finetune_config(offline_run, "finetune/ovmse", _overrides(full)))
    broken = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="simulated"):
        finetune(finetune_config(offline_run, "finetune/ovmse", _overrides(broken)), extra_callbacks=[CrashAt(16)])
    assert _checkpoint(broken)["lightning_marl"]["env_steps"] == 160
    assert cli.main(["finetune", f"resume={broken}"]) == 0

    a, b = _checkpoint(full), _checkpoint(broken)
    assert b["lightning_marl"]["env_steps"] == BUDGET and b["lightning_marl"]["iteration"] == 32
    # a one-step game has no episode in progress to lose: the resumed run is the same run
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, value in a["OnlineDataModule"]["buffer"]["data"].items():
        if key != "episode":  # episode ids restart with the collector
            assert torch.equal(value, b["OnlineDataModule"]["buffer"]["data"][key]), key


def test_fit_with_an_online_section_continues_online(tmp_path, climbing_dataset):
    run_dir = tmp_path / "run"
    assert cli.main([
        "fit", "algorithm.name=qmix_cql", "algorithm.steps=10", "algorithm.batch_size=32", "algorithm.hidden=[16,16]",
        "algorithm.mixer_embed=8", f"data.path={climbing_dataset.path}", "env.name=dataset", "env.num_envs=4",
        "eval.episodes=4", f"run_dir={run_dir}", "progress=false", "online.env_steps=80", "online.num_envs=4",
        "online.frames_per_batch=40", "online.updates_per_collection=2",
        "online.plugins=[{name: value_memory}, {name: sequential_exploration}]",
    ]) == 0
    offline = _checkpoint(run_dir)["lightning_marl"]
    assert offline["iteration"] == 10 and offline["env_steps"] == 0 and offline["plugins"] == []
    online = _checkpoint(run_dir / "online")["lightning_marl"]
    assert online["env_steps"] == 80 and online["iteration"] == 4
    assert len(online["plugins"]) == 2 and online["plugins"][0]["agent_net"]  # the value memory ran online
    assert json.loads((run_dir / "online" / "eval.json").read_text())["env_steps"] == 80


def test_finetune_a_continuous_method_in_vmas(tmp_path, one_thread):
    from lightning_marl.collect.behaviour import uniform_random
    from lightning_marl.collect.collector import collect_transitions
    from lightning_marl.data.dataset import write_dataset
    from lightning_marl.data.schema import TaskSpec
    from lightning_marl.envs import env_spec, make_env

    env = make_env("vmas", "navigation", num_envs=4, max_steps=5, n_agents=2)
    spec = env_spec(env)
    transitions = collect_transitions(env, uniform_random(spec, torch.Generator().manual_seed(0)), 8, spec,
                                      progress=False)
    task = TaskSpec(n_agents=2, obs_dim=spec["obs_dim"], state_dim=spec["state_dim"], discrete=False,
                    action_dim=2, action_low=spec["action_low"], action_high=spec["action_high"])
    dataset = write_dataset(tmp_path / "data", transitions, {
        "spec": task, "env": {"name": "vmas", "task": "navigation", "params": {"n_agents": 2}, "max_steps": 5}})
    offline = tmp_path / "offline"
    assert cli.main(["fit", "algorithm.name=omiga", "algorithm.steps=5", "algorithm.batch_size=16", "algorithm.mixer_hidden=8",
                     "algorithm.hidden=[16,16]", f"data.path={dataset.path}", "env.name=dataset", "env.num_envs=4",
                     "eval.episodes=4", f"run_dir={offline}", "progress=false"]) == 0
    assert cli.main(["finetune", "--from", str(offline), "online.env_steps=40", "online.num_envs=4",
                     "online.frames_per_batch=20", "online.updates_per_collection=2", "online.offline_ratio=0.5",
                     "plugins=[{name: sequential_exploration}]", "eval.episodes=4", "env.num_envs=4",
                     f"run_dir={tmp_path / 'online'}", "progress=false"]) == 0
    checkpoint = _checkpoint(tmp_path / "online")
    assert checkpoint["lightning_marl"]["env_steps"] == 40 and checkpoint["lightning_marl"]["iteration"] == 4
    actions = checkpoint["OnlineDataModule"]["buffer"]["data"]["agents.action"]
    assert actions.shape == (40, 2, 2) and actions.abs().max() <= 1.0  # stored in the method's units
    assert len(json.loads((tmp_path / "online" / "eval.json").read_text())["history"]) == 2  # step 0 and the end


def test_finetune_refuses_networks_that_do_not_fit_the_offline_weights(tmp_path, offline_run, capsys):
    assert cli.main(["finetune", "--from", str(offline_run), "algorithm.hidden=[8,8]", "online.env_steps=40",
                     "online.num_envs=4", "online.frames_per_batch=40", f"run_dir={tmp_path / 'r'}",
                     "progress=false"]) == 2
    assert "do not fit the configured networks" in capsys.readouterr().err
    assert cli.main(["finetune"]) == 2  # neither --from nor resume=
