"""``dataset convert --from FORMAT SRC DST`` and ``dataset export --to minari SRC DST``.

Formats: ogmarl (flashbax vaults, needs the smax extra), omiga (MaMuJoCo HDF5 or a folder of
SMAC torch episodes), omar (per-agent numpy arrays), pymarl (episode-batch HDF5), minari.
Reference returns come from --reference-random/--reference-expert, else from the shipped table
of published values, else they stay null (no normalised score is reported).
"""

from __future__ import annotations

# flag -> importer option; only flags the user sets are passed on (the importer refuses the rest)
_OPTION_FLAGS = {
    "omiga_next_row": "next_row_compat",
    "episode_length": "episode_length",
    "action_bounds": "action_bounds",
    "allow_pickle": "allow_pickle",
    "agents": "agents",
}


def cmd_convert(args) -> int:
    from lightning_marl.data.importers.common import convert

    options = {}
    for flag, option in _OPTION_FLAGS.items():
        value = getattr(args, flag)
        if value not in (None, False):
            options[option] = value
    if "agents" in options:
        options["agents"] = [int(i) for i in options["agents"].split(",") if i.strip()]
    ds = convert(
        args.from_format, args.src, args.dst, reference_random=args.reference_random,
        reference_expert=args.reference_expert, reference_table=args.reference_table, task=args.task,
        quality=args.quality, env=args.env, overwrite=args.overwrite, **options,
    )
    meta = ds.metadata
    returns, ref = meta["episode_returns"], meta["reference_returns"]
    print(f"converted {args.from_format} {args.src} -> {ds.path}")
    print(f"  task {meta['env'].get('task')}  quality {meta.get('quality')}  "
          f"transitions {meta['n_transitions']}  episodes {meta['n_episodes']}")
    print(f"  return mean {returns['mean']:.3f} (min {returns['min']:.3f}, max {returns['max']:.3f})")
    if ref.get("random") is None:
        print("  reference returns: none (no normalised scores); give --reference-random and --reference-expert")
    else:
        print(f"  reference returns: random {ref['random']} expert {ref['expert']} ({ref['source']})")
    for note in meta.get("notes") or []:
        print(f"  note: {note}")
    print(f"  inspect it with: python -m lightning_marl dataset info {ds.path}")
    return 0


def cmd_export(args) -> int:
    from lightning_marl.data.importers.minari_format import export_minari

    target = export_minari(args.src, args.dst, dataset_id=args.dataset_id, overwrite=args.overwrite)
    dataset_id = str(target.relative_to(args.dst))
    print(f"exported {args.src} -> Minari dataset {dataset_id} at {target}")
    print(f"  read it with: MINARI_DATASETS_PATH={args.dst} python -c "
          f"\"import minari; print(minari.load_dataset('{dataset_id}'))\"")
    return 0


def add_dataset_commands(dsub) -> None:
    convert = dsub.add_parser(
        "convert", help="convert a published dataset (ogmarl, omiga, omar, pymarl, minari) into our format",
        description=__doc__,
    )
    convert.add_argument("--from", dest="from_format", required=True, metavar="FORMAT",
                         help="ogmarl | omiga | omar | pymarl | minari (or an importer a plugin registers)")
    convert.add_argument("src", help="the foreign file or directory")
    convert.add_argument("dst", help="the dataset directory to write (atomically)")
    convert.add_argument("--reference-random", type=float, help="reference return of a random policy")
    convert.add_argument("--reference-expert", type=float, help="reference return of an expert policy")
    convert.add_argument("--reference-table", help="a JSON table of published references (default: the shipped one)")
    convert.add_argument("--task", help="env task to record (default: from the file name)")
    convert.add_argument("--quality", help="quality label to record (default: from the file name)")
    convert.add_argument("--env", help="registered env name to record (lets `fit` evaluate with env.name=dataset)")
    convert.add_argument("--omiga-next-row", action="store_true",
                         help="omiga: reproduce OMIGA's next-row convention (time-limit ends chain into the next episode)")
    convert.add_argument("--episode-length", type=int, help="omiga: time limit in rows, to split unmarked episode ends")
    convert.add_argument("--action-bounds", type=float, nargs=2, metavar=("LOW", "HIGH"),
                         help="the environment's action bounds, to rescale continuous actions to [-1, 1]")
    convert.add_argument("--agents", help="omar: comma-separated agent indices to import (e.g. the predators 0,1,2)")
    convert.add_argument("--allow-pickle", action="store_true",
                         help="omiga SMAC torch files: unpickle arbitrary objects. This can run code stored in "
                              "the file: use it only for files from a source you trust")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    convert.set_defaults(func=cmd_convert)

    export = dsub.add_parser("export", help="export a dataset to another format (minari)")
    export.add_argument("--to", dest="to_format", required=True, choices=["minari"], help="target format")
    export.add_argument("src", help="our dataset directory")
    export.add_argument("dst", help="a Minari datasets root (like MINARI_DATASETS_PATH)")
    export.add_argument("--dataset-id", help="Minari id namespace/name-v0 (default lightning_marl/<id>-v0)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    export.set_defaults(func=cmd_export)
