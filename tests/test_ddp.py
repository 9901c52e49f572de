"""Two CPU processes under plain DDP: per-rank sampling, identical parameters, and equality with a
single process fed both ranks' batches."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from lightning_marl.callbacks import available_cores
from lightning_marl.config import load_config
from lightning_marl.data.datamodule import OfflineDataModule
from lightning_marl.run import fit

WORKER = Path(__file__).parent / "ddp_worker.py"


def _run_ddp(tmp_path, dataset, algorithm, steps, extra=()):
    out = tmp_path / "ranks"
    out.mkdir()
    overrides = [
        f"algorithm.name={algorithm}", f"algorithm.steps={steps}", "algorithm.batch_size=16",
        "algorithm.hidden=[32,32]", "algorithm.lr=0.003", f"data.path={dataset.path}",
        f"run_dir={tmp_path / 'ddp_run'}", "progress=false", "log_every=1", "checkpoint_every=1000",
        "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run([sys.executable, str(WORKER), str(out), *overrides], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)], overrides


class BothRanksDataModule(OfflineDataModule):
    """One process fed the concatenation of what ranks 0 and 1 sample at each iteration."""

    def sample(self, iteration):
        return torch.cat([self.sample_for_rank(0, iteration), self.sample_for_rank(1, iteration)])


def test_bc_under_ddp_equals_one_process_on_both_ranks_batches(tmp_path, continuous_dataset):
    ranks, overrides = _run_ddp(tmp_path, continuous_dataset, "bc", steps=5)
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 5
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"ranks differ in {key}"

    single = [o for o in overrides if not o.startswith(("trainer.", "run_dir="))]
    cfg = load_config(None, single + ["algorithm.batch_size=16", f"run_dir={tmp_path / 'single'}"])
    module = fit(cfg, datamodule_class=BothRanksDataModule)["module"]
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, ranks[0]["state"][key], atol=1e-5, rtol=0, msg=key)
    fresh = fit(load_config(None, single + ["algorithm.steps=0", f"run_dir={tmp_path / 'init'}"]))["module"]
    moved = any(not torch.allclose(v, fresh.state_dict()[k]) for k, v in module.state_dict().items())
    assert moved, "training did not change the parameters: the comparison would be vacuous"

    # Each rank draws its own batches: rank 1's stream differs from rank 0's.
    dm = OfflineDataModule(continuous_dataset, batch_size=16, seed=0)
    assert not torch.equal(dm.sample_for_rank(0, 0)["agents", "observation"], dm.sample_for_rank(1, 0)["agents", "observation"])


def test_omiga_under_ddp_keeps_ranks_identical(tmp_path, continuous_dataset):
    ranks, _ = _run_ddp(tmp_path, continuous_dataset, "omiga", steps=4, extra=["algorithm.mixer_hidden=8"])
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 4
    # The two CPU processes split the cores instead of each starting one thread per core.
    assert ranks[0]["threads"] == ranks[1]["threads"] == max(1, available_cores() // 2)
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"ranks differ in {key}"


def test_matd3bc_under_ddp_computes_its_delayed_actor_loss_every_step(tmp_path, continuous_dataset):
    """Alone, TD3's actor loss is left out between delayed updates; under DDP every parameter
    needs a gradient at every step, so it is computed (and the ranks stay identical)."""
    ranks, _ = _run_ddp(tmp_path, continuous_dataset, "matd3bc", steps=5)
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 5
    assert ranks[0]["every_loss_each_step"] and ranks[1]["every_loss_each_step"]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"ranks differ in {key}"
