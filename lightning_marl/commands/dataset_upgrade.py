"""``dataset upgrade``: rewrite a dataset of an older schema version in the current layout.

Schema version 1 stored every next-step field as an array of its own; version 2 stores each once
(data/next_steps.py), about half the bytes of the observations and states, and a state that is
the observations concatenated as a view of their file: together about a quarter of what a cold
start read before on the built-in recipes' kind of data. Older datasets load unchanged, so upgrading is optional. The dataset is fully
verified first (every checksum and the batch contract), written to a temporary directory and
renamed over the old one (or written to ``--to``), so an interrupted upgrade leaves the old one.

Example:
    >>> upgrade_dataset("datasets/old")            # doctest: +SKIP
    (1, 2)
"""

from __future__ import annotations

from pathlib import Path

from lightning_marl.data.dataset import load_dataset, write_dataset
from lightning_marl.data.schema import SCHEMA_VERSION

COMPUTED = ("format", "schema_version", "n_transitions", "n_episodes", "episode_returns", "arrays", "checksum",
            "next_steps")


def upgrade_dataset(path, dst=None, overwrite: bool = False) -> tuple[int, int]:
    """Rewrite the dataset at ``path`` (in place, or at ``dst``) in the current schema version; returns
    (old version, new version). A current dataset is left as it is (copied to ``dst`` if given)."""
    dataset = load_dataset(path, verify="always")
    version = dataset.metadata["schema_version"]
    if version == SCHEMA_VERSION and dst is None:
        return version, version
    meta = {key: value for key, value in dataset.metadata.items() if key not in COMPUTED}
    if version != SCHEMA_VERSION:
        meta["upgraded_from"] = {"schema_version": version, "checksum": dataset.checksum}
    in_place = dst is None or Path(dst).resolve() == Path(path).resolve()
    write_dataset(path if in_place else dst, dataset.transitions, meta, overwrite=in_place or overwrite)
    return version, SCHEMA_VERSION


def cmd_upgrade(args) -> int:
    before = _size(Path(args.path))
    old, new = upgrade_dataset(args.path, args.to, overwrite=args.overwrite)
    target = Path(args.to or args.path)
    if old == new and args.to is None:
        print(f"{args.path}: already schema version {new}; nothing to do")
    else:
        print(f"{target}: schema version {old} -> {new}, {before / 1e9:.3f} GB -> {_size(target) / 1e9:.3f} GB")
    return 0


def _size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*.bin"))


def add_dataset_commands(dsub) -> None:
    upgrade = dsub.add_parser("upgrade", help="rewrite a dataset of an older schema version in the current layout",
                              description=__doc__)
    upgrade.add_argument("path", help="the dataset directory")
    upgrade.add_argument("--to", help="write the upgraded dataset here instead of replacing PATH")
    upgrade.add_argument("--overwrite", action="store_true", help="replace --to if it exists")
    upgrade.set_defaults(func=cmd_upgrade)
