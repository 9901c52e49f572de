"""The ``compile`` switch: torch.compile of the losses (CUDA graphs on CUDA); the real compile is slow."""

import pytest
import torch

from lightning_marl.algorithms.bc import BC
from lightning_marl.config import load_config
from lightning_marl.run import fit


def test_compile_switch_compiles_the_losses_of_the_run(tmp_path, climbing_dataset, monkeypatch):
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = load_config(None, [f"data.path={climbing_dataset.path}", "algorithm.name=bc", "algorithm.steps=3",
                             "algorithm.hidden=[8,8]", f"run_dir={tmp_path}", "progress=false", "compile=true",
                             "trainer.accelerator=cpu"])
    fit(cfg)
    assert calls == [{"mode": "default", "dynamic": False}]
    fit(load_config(None, [f"data.path={climbing_dataset.path}", "algorithm.name=bc", "algorithm.steps=3",
                           "algorithm.hidden=[8,8]", f"run_dir={tmp_path / 'eager'}", "progress=false"]))
    assert len(calls) == 1  # off by default


@pytest.mark.slow
def test_compiled_losses_equal_eager_on_cpu(continuous_transitions):
    td, spec = continuous_transitions
    torch.manual_seed(0)
    eager = BC.from_spec(spec, hidden=[16, 16])
    compiled = BC.from_spec(spec, hidden=[16, 16])
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_losses()
    for _ in range(3):
        a, b = eager.train_step(td[:64]), compiled.train_step(td[:64])
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
