"""``python -m lightning_marl finetune --from RUN_DIR_OR_CKPT [--config FILE_OR_NAME] key=value ...``

Continues a trained method online (lightning_marl.online): the offline run's config and weights,
an ``online`` section, plugins such as ``value_memory`` and ``sequential_exploration``
(``--config finetune/ovmse``), and dot-list overrides. ``finetune resume=RUN_DIR`` continues an
interrupted finetune run (its online buffer and env-step counter included).
"""

from __future__ import annotations

from pathlib import Path


def cmd_finetune(args) -> int:
    from omegaconf import OmegaConf

    from lightning_marl.config import to_yaml
    from lightning_marl.errors import ConfigError
    from lightning_marl.online.finetune import finetune, finetune_config

    resume = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("resume=")), None)
    base = None
    if resume and Path(resume).is_dir() and (Path(resume) / "config.yaml").exists() and args.source is None:
        base = OmegaConf.load(Path(resume) / "config.yaml")
    elif args.source is None:
        raise ConfigError("finetune needs --from RUN_DIR (or a .ckpt, or a config), or resume=RUN_DIR of a finetune run")
    cfg = finetune_config(args.source, args.config, args.overrides, base=base)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    summary = finetune(cfg)
    if not summary:
        return 0
    from lightning_marl.cli import _fmt, print_summary

    print_summary(summary, command="finetune")
    print(f"  env steps          {summary.get('env_steps')} ({_fmt(summary.get('env_steps_per_s'), 1)} env steps/s "
          f"with learning on)")
    return 0


def add_commands(sub) -> None:
    parser = sub.add_parser("finetune", help="continue a trained method online (offline-to-online)")
    parser.add_argument("--from", dest="source", help="a run directory or checkpoint of fit, or a finetune config")
    parser.add_argument("--config", help="finetune config file or shipped name (e.g. finetune/ovmse)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. online.env_steps=50000)")
    parser.set_defaults(func=cmd_finetune)
