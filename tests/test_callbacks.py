"""Checkpoints are written under a temporary name and renamed: a crash mid-write loses nothing."""

from types import SimpleNamespace

import pytest
import torch

from lightning_marl.callbacks import IterationCheckpoint


class FakeTrainer(SimpleNamespace):
    """Writes ``payload`` with torch.save; with ``crash_after`` bytes it dies half-way like a killed process."""

    is_global_zero = True

    def save_checkpoint(self, path, weights_only=False):
        if self.crash_after is None:
            torch.save(self.payload, path)
            return
        torch.save(self.payload, path)
        with open(path, "r+b") as handle:
            handle.truncate(self.crash_after)
        raise KeyboardInterrupt("killed mid-write (simulated)")


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one_loadable(tmp_path):
    callback = IterationCheckpoint(tmp_path / "checkpoints", every=10)
    good = {"iteration": torch.tensor(10), "w": torch.arange(1000.0)}
    callback.save(FakeTrainer(payload=good, crash_after=None))
    bad = {"iteration": torch.tensor(20), "w": torch.full((1000,), float("nan"))}
    with pytest.raises(KeyboardInterrupt):
        callback.save(FakeTrainer(payload=bad, crash_after=200))
    loaded = torch.load(callback.last, weights_only=True)
    assert int(loaded["iteration"]) == 10 and torch.equal(loaded["w"], good["w"])
    # The half-written file never carries the final name; the next save replaces it cleanly.
    leftovers = [p.name for p in callback.dirpath.iterdir() if p.name != "last.ckpt"]
    assert all(name.startswith(".last.ckpt.tmp-") for name in leftovers)
    callback.save(FakeTrainer(payload={"iteration": torch.tensor(30)}, crash_after=None))
    assert int(torch.load(callback.last, weights_only=True)["iteration"]) == 30
    assert [p.name for p in callback.dirpath.iterdir()] == ["last.ckpt"]  # stale partial files cleaned up
