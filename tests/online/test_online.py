"""The online loop's parts: collection with explore hooks, the buffer, the offline mix, the schema."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from lightning_marl.config import load_config
from lightning_marl.data import schema
from lightning_marl.envs import env_spec, make_env
from lightning_marl.errors import ConfigError, PluginError
from lightning_marl.online import Collector, OnlineBuffer, OnlineDataModule, env_steps_at, iterations_for


class FixedPolicy:
    """Always the joint action ``action`` (indices); ``explore`` may rewrite it like a plugin."""

    def __init__(self, action, explore=None):
        self.action = torch.as_tensor(action)
        self._explore = explore
        self.device = torch.device("cpu")
        self.env_steps = 0

    def act(self, observation, mask=None):
        return self.action.expand(*observation.shape[:-2], len(self.action)).clone()

    def explore(self, td):
        return self._explore(td) if self._explore else td


def test_collector_steps_every_env_and_applies_the_explore_hook():
    env = make_env("matrix", "climbing", num_envs=4)

    def second_agent_plays_1(td):
        td[schema.ACTION][:, 1] = 1
        return td

    rows = Collector(env, env_spec(env), seed=0).collect(FixedPolicy([0, 0], second_agent_plays_1), 12)
    assert rows.batch_size == (12,)
    assert rows[schema.ACTION].tolist() == [[0, 1]] * 12  # the executed (explored) action is stored
    assert rows[schema.REWARD].squeeze(-1).tolist() == [-30.0] * 12  # and it is what the env received
    assert rows[schema.EPISODE].tolist() == list(range(12))  # one-step episodes: a new id every step
    with pytest.raises(ValueError, match="multiple"):
        Collector(env, env_spec(env)).collect(FixedPolicy([0, 0]), 6)


def test_collector_stores_continuous_actions_in_unit_range_and_sends_env_units(one_thread):
    env = make_env("vmas", "navigation", num_envs=2, max_steps=5, n_agents=2)
    spec = env_spec(env)
    policy = SimpleNamespace(act=lambda obs, mask: torch.full((*obs.shape[:2], 2), 0.5), explore=lambda td: td,
                             device=torch.device("cpu"), env_steps=0)
    collector = Collector(env, spec, seed=0)
    rows = collector.collect(policy, 12)  # 6 rounds of 2 envs: episodes of 5 steps carry over the call
    assert torch.equal(rows[schema.ACTION], torch.full((12, 2, 2), 0.5))
    assert rows[schema.TRUNCATED].reshape(6, 2)[4].all() and not rows[schema.DONE].reshape(6, 2)[:4].any()
    assert rows[schema.EPISODE].reshape(6, 2)[5].tolist() == [2, 3]  # new episodes after the time limit
    assert len(collector.finished_returns) == 2
    wide = Collector(env, {**spec, "action_low": [-2.0, 0.0], "action_high": [2.0, 1.0]})
    assert wide._to_env(torch.tensor([0.5, 0.5])).tolist() == [1.0, 0.75]  # [-1, 1] -> the env's bounds


def test_budget_maps_to_iterations_and_back():
    assert iterations_for(1000, 200, 5) == 25
    assert [env_steps_at(k, 200, 5) for k in (0, 1, 5, 6, 25)] == [0, 200, 200, 400, 1000]


def test_online_buffer_keeps_the_newest_rows_in_a_weights_only_state(tmp_path):
    from tensordict import TensorDict

    buffer = OnlineBuffer(capacity=5)
    for start in (0, 4):
        buffer.extend(TensorDict({schema.REWARD: torch.arange(start, start + 4.0).unsqueeze(-1)}, [4]))
    torch.save(buffer.state_dict(), tmp_path / "b.pt")
    restored = OnlineBuffer(capacity=5)
    restored.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True))
    assert sorted(restored.contents()[schema.REWARD].squeeze(-1).tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]
    restored.extend(TensorDict({schema.REWARD: torch.tensor([[8.0]])}, [1]))  # the cursor came back too
    assert sorted(restored.contents()[schema.REWARD].squeeze(-1).tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert torch.equal(restored.sample(7, seed=1)[schema.REWARD], restored.sample(7, seed=1)[schema.REWARD])


@pytest.mark.parametrize("ratio, n_offline", [(0.0, 0), (0.25, 8), (1.0, 32)])
def test_batches_mix_offline_and_online_rows_at_the_ratio(climbing_dataset, ratio, n_offline):
    online = OmegaConf.create({"num_envs": 4, "frames_per_batch": 8, "updates_per_collection": 2,
                               "buffer_size": 100, "offline_ratio": ratio})
    env = OmegaConf.create({"name": "matrix", "task": "climbing", "max_steps": None, "params": {}})
    dm = OnlineDataModule(climbing_dataset, 32, seed=0, env=env, online=online)
    dm.setup("fit")
    policy = FixedPolicy([0, 1])  # a joint action the offline data never holds
    for _ in range(2):
        dm.collect(policy)
    assert dm.env_steps == policy.env_steps == 16 and len(dm.online_buffer) == 16
    batch = dm.sample(0)
    online_rows = (batch[schema.ACTION] == torch.tensor([0, 1])).all(-1)
    assert batch.batch_size == (32,) and int((~online_rows).sum()) == n_offline
    assert torch.equal(dm.sample(0)[schema.REWARD], batch[schema.REWARD])  # a pure function of the iteration
    state = dm.state_dict()
    assert state["env_steps"] == 16 and state["buffer"]["data"]["agents.action"].shape == (16, 2)
    dm.teardown()


def test_online_config_is_validated(climbing_dataset):
    base = [f"data.path={climbing_dataset.path}", "algorithm.name=qmix_cql"]
    cfg = load_config(None, [*base, "online.env_steps=500"])
    assert cfg.online.env_steps == 500 and cfg.online.frames_per_batch == 256  # schema defaults fill the rest
    with pytest.raises(ConfigError, match="multiple of online.num_envs"):
        load_config(None, [*base, "online.frames_per_batch=10", "online.num_envs=4"])
    with pytest.raises(ConfigError, match="offline_ratio"):
        load_config(None, [*base, "online.offline_ratio=1.5"])
    with pytest.raises(ConfigError, match="online.frame_per_batch"):
        load_config(None, [*base, "online.frame_per_batch=10"])


def test_fit_refuses_an_explore_plugin(tmp_path, climbing_dataset):
    from lightning_marl.run import fit

    cfg = load_config(None, [f"data.path={climbing_dataset.path}", "algorithm.name=qmix_cql", "algorithm.steps=2",
                             f"run_dir={tmp_path}", "plugins=[{name: epsilon_greedy}]", "progress=false"])
    with pytest.raises(PluginError, match="finetune"):
        fit(cfg)


def test_each_ddp_rank_gets_its_own_online_buffer_back(tmp_path, climbing_dataset):
    online = OmegaConf.create({"num_envs": 4, "frames_per_batch": 8, "updates_per_collection": 2,
                               "buffer_size": 100, "offline_ratio": 0.5})
    env = OmegaConf.create({"name": "matrix", "task": "climbing", "max_steps": None, "params": {}})
    states = []
    for joint_action in ([0, 1], [2, 2]):  # what rank 0 and rank 1 collected
        dm = OnlineDataModule(climbing_dataset, 32, seed=0, env=env, online=online)
        dm.setup("fit")
        dm.collect(FixedPolicy(joint_action))
        states.append(dm.state_dict())
        dm.teardown()
    torch.save({"ranks": states}, tmp_path / "state.pt")  # what a DDP checkpoint holds
    saved = torch.load(tmp_path / "state.pt", weights_only=True)

    def resumed(world, rank):
        dm = OnlineDataModule(climbing_dataset, 32, seed=0, env=env, online=online)
        dm.setup("fit")
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, lightning_module=SimpleNamespace(env_steps=0))
        return dm

    for rank, joint_action in ((0, [0, 1]), (1, [2, 2])):
        dm = resumed(2, rank)
        dm.load_state_dict(saved)
        actions = dm.online_buffer.contents().get(schema.ACTION)
        assert len(dm.online_buffer) == 8 and (actions == torch.tensor(joint_action)).all()
        assert dm.env_steps == 8 and dm.trainer.lightning_module.env_steps == 8
        dm.teardown()
    dm = resumed(3, 0)
    with pytest.raises(ConfigError, match="online buffers of 2 DDP processes, this run has 3"):
        dm.load_state_dict(saved)
    dm.teardown()
