"""finetune under DDP (two CPU processes, ddp_spawn): every rank collects its own experience."""

import lightning as L
import pytest
import torch

from lightning_marl import cli
from lightning_marl.data import schema
from lightning_marl.online import finetune, finetune_config


class DumpRank(L.Callback):
    """Each rank writes its parameters, env-step counter and online buffer's actions."""

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_end(self, trainer, module):
        torch.save({
            "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "env_steps": module.env_steps,
            "actions": trainer.datamodule.online_buffer.contents().get(schema.ACTION).clone(),
        }, self.out_dir / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_finetune_under_ddp_spawn(tmp_path, climbing_dataset):
    offline = tmp_path / "offline"
    assert cli.main([
        "fit", "algorithm.name=qmix_cql", "algorithm.steps=10", "algorithm.batch_size=32", "algorithm.hidden=[16,16]",
        "algorithm.mixer_embed=8", f"data.path={climbing_dataset.path}", "env.name=dataset", "env.num_envs=4",
        "eval.episodes=4", f"run_dir={offline}", "progress=false",
    ]) == 0
    cfg = finetune_config(offline, None, [
        "online.env_steps=160", "online.num_envs=4", "online.frames_per_batch=40", "online.updates_per_collection=2",
        "plugins=[{name: epsilon_greedy, params: {start: 0.5, end: 0.5}}]", "eval.episodes=4", "env.num_envs=4",
        f"run_dir={tmp_path / 'online'}", "progress=false", "trainer.devices=2", "trainer.strategy=ddp_spawn",
        "trainer.accelerator=cpu",
    ])
    finetune(cfg, extra_callbacks=[DumpRank(tmp_path)])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["env_steps"] == ranks[1]["env_steps"] == 160
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"ranks differ in {key}"
    # each rank explored with its own stream (seeded by rank): different experience
    assert not torch.equal(ranks[0]["actions"], ranks[1]["actions"])
    # the last checkpoint holds both ranks' buffers, each as that rank had it
    checkpoint = torch.load(tmp_path / "online" / "checkpoints" / "last.ckpt", weights_only=True)
    saved = checkpoint["OnlineDataModule"]["ranks"]
    assert len(saved) == 2
    for rank, state in enumerate(saved):
        assert state["env_steps"] == 160
        assert torch.equal(state["buffer"]["data"]["agents.action"], ranks[rank]["actions"])
