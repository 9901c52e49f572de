"""Keep freed activation buffers in the process instead of handing them back to the OS.

A training step allocates and frees the same large buffers (activations and gradients of a few
hundred KB to a few MB) every iteration. With glibc's default settings part of that memory goes
back to the operating system at each ``free`` (heap trimming, and ``mmap`` for blocks above a
threshold that adapts only gradually), so the next step takes fresh zero pages from the kernel:
one page fault per 4 KB. Measured on the project's 2-core machines (OMIGA, batch 128, 2x256
networks, 200 steps): with 6 agents our step took 335-690 page faults per step and 6.3-7.3 ms;
with ``tune_malloc()`` 0.2-2 faults and 5.4-6.0 ms. With 3 agents our step took 0.6-12 faults
per step either way and ran at the same speed (3.6-3.8 ms).

``fit`` (and ``finetune``) call ``tune_malloc()`` unless the config says ``tune_malloc: false``.
It changes three ``mallopt`` settings for the whole process (glibc only; elsewhere it does
nothing): blocks up to 32 MiB come from the heap, and up to 256 MiB of free heap stays in the
process (64 MiB of padding when the heap grows). The cost is that much freed memory kept instead
of returned; private memory of a 10M-transition ``fit`` stays far below its 2 GB goal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # musl and other C libraries have no mallopt (or ignore these settings)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20, top_pad: int = 64 << 20) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD`` and ``M_TOP_PAD`` for this process
    (see the module); returns whether all three were set (False off glibc).

    Example:
        >>> import sys
        >>> tune_malloc() or not sys.platform.startswith("linux")
        True
    """
    libc = _glibc()
    if libc is None:
        return False
    settings = ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
