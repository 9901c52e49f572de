"""``python -m lightning_marl collect [--config FILE_OR_NAME] key.sub=value ...``: make datasets.

Trains (or scripts) behaviour policies for one task and writes one dataset per quality
(random, medium, medium-replay, expert, medium-expert, user mixtures) into ``output_dir``.
Interrupt it at any time and run the same command again: it picks up the finished chunks and
the trained checkpoints from ``work_dir``.

Example::

    python -m lightning_marl collect --config collect/vmas_navigation output_dir=datasets
    python -m lightning_marl collect --config collect/smax_3m qualities.expert.episodes=2000 only=[expert]
"""

from __future__ import annotations

import sys


def cmd_collect(args) -> int:
    from lightning_marl.collect.config import load_collect_config

    cfg = load_collect_config(args.config, args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    from lightning_marl.collect.pipeline import run_collect
    from lightning_marl.data.dataset import read_metadata

    command = "python -m lightning_marl " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["collect"] else None
    if command is None:
        command = "python -m lightning_marl collect " + " ".join(
            ([f"--config {args.config}"] if args.config else []) + list(args.overrides))
    try:
        result = run_collect(cfg, command=command)
    except KeyboardInterrupt:
        print("\ninterrupted: finished chunks and checkpoints are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    reference = result["reference"]
    print(f"\nlightning_marl collect: {cfg.name}")
    print(f"  reference returns  random {reference['random']:.4g}  expert {reference['expert']:.4g}")
    for quality, path in result["datasets"].items():
        meta = read_metadata(path)
        mean = meta["episode_returns"]["mean"]
        low, high = reference["random"], reference["expert"]
        score = 100 * (mean - low) / (high - low) if high != low else float("nan")
        print(f"  {quality:<14} {meta['n_episodes']:>6} episodes {meta['n_transitions']:>9} transitions  "
              f"return {mean:.4g} (normalised {score:.1f})  {path}")
    return 0


def add_commands(sub) -> None:
    import argparse

    parser = sub.add_parser("collect", help="make datasets at quality levels (random, medium, expert, ...)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file or shipped config name, e.g. collect/vmas_navigation")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.env_steps=100000")
    parser.set_defaults(func=cmd_collect)
