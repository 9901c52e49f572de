"""Background prefetching of batches: reads from a memory-mapped dataset overlap training.

A batch of a large memory-mapped dataset touches a few hundred random pages per key; when they
are not in the page cache each is a blocking disk read. Because the batch of iteration k is a
pure function of (seed, rank, k) (see datamodule.py), the next batches are known in advance and
a few threads can fetch them while the current step computes. Page faults happen inside
PyTorch's gather kernels, which release the GIL, so plain threads overlap with the training step.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator


def prefetched(fetch: Callable[[int], object], start: int, depth: int = 4, workers: int = 2) -> Iterator:
    """Yield ``fetch(start), fetch(start + 1), ...`` forever, keeping ``depth`` calls in flight.

    ``fetch`` must be thread-safe and deterministic in its argument; the order of results is the
    order of iterations whatever order the threads finish in. ``depth=0`` fetches inline.

    Example:
        >>> stream = prefetched(lambda k: k * k, start=3, depth=2)
        >>> [next(stream) for _ in range(4)]
        [9, 16, 25, 36]
        >>> stream.close()
    """
    if depth <= 0:
        iteration = start
        while True:
            yield fetch(iteration)
            iteration += 1
    executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lightning_marl-prefetch")
    pending: deque = deque()
    try:
        next_to_submit = start
        while True:
            while len(pending) < depth:
                pending.append(executor.submit(fetch, next_to_submit))
                next_to_submit += 1
            yield pending.popleft().result()
    finally:  # the consumer stopped (generator closed or garbage-collected): drop what is queued
        executor.shutdown(wait=False, cancel_futures=True)
