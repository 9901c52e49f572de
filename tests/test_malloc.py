"""tune_malloc: glibc keeps freed blocks for reuse (checked in fresh processes), and fit applies it."""

import subprocess
import sys

import pytest

from lightning_marl.malloc import _glibc

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt is not available here")

# Allocate, write and free a 16 MiB block three times; print the page faults of each round.
PROBE = """
import ctypes, resource, sys
from lightning_marl.malloc import _glibc, tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
libc = _glibc()
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(16 << 20)
    ctypes.memset(block, 1, 16 << 20)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def faults_per_round(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return [int(x) for x in out.stdout.split()]


@needs_glibc
def test_tuned_malloc_reuses_a_freed_16_mib_block_where_glibcs_default_faults_it_in_again():
    default, tuned = faults_per_round("default"), faults_per_round("tuned")
    pages = (16 << 20) // 4096
    assert default[0] > pages // 2 and tuned[0] > pages // 2, "the first round touches fresh memory either way"
    # glibc's default maps the block, unmaps it at free, then grows the heap for the second: fresh pages again
    assert default[1] > pages // 2
    assert tuned[1] < pages // 20 and tuned[2] < pages // 20, "tuned: the freed block is reused, no new pages"


def test_fit_applies_it_unless_the_config_says_no(monkeypatch, tmp_path):
    import lightning_marl.run as run

    calls = []
    monkeypatch.setattr(run, "tune_malloc", lambda: calls.append(1) or True)

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(run, "resume_checkpoint", stop)
    from omegaconf import OmegaConf

    for setting, expected in ((True, [1]), (False, [])):
        calls.clear()
        with pytest.raises(Stop):
            run.fit(OmegaConf.create({"tune_malloc": setting}))
        assert calls == expected
