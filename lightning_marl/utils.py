"""Small helpers with no project dependencies: atomic writes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_torch_save(obj, path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves a loadable half-file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
