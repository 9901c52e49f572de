"""``python -m lightning_marl <command>``: fit, evaluate, dataset, plugins and the commands of commands/.

Configuration is a YAML file (or a shipped config name) plus bare OmegaConf dot-list overrides::

    python -m lightning_marl fit --config omiga/vmas_navigation algorithm.alpha=1.0 trainer.devices=2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

from lightning_marl.errors import LightningMarlError  # noqa: E402


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def cmd_fit(args) -> int:
    from omegaconf import OmegaConf

    from lightning_marl.config import DEFAULT_CONFIG, load_config, to_yaml

    base = None
    resume = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("resume=")), None)
    if resume and Path(resume).is_dir() and (Path(resume) / "config.yaml").exists() and args.config is None:
        try:  # a yaml SafeLoader: python tags are refused, not run
            base = OmegaConf.load(Path(resume) / "config.yaml")
        except Exception as error:
            from lightning_marl.errors import ConfigError

            raise ConfigError(f"cannot read {Path(resume) / 'config.yaml'}: {str(error).splitlines()[0]}") from None
        if base.get("data") is not None and base.data.get("recipe"):
            base.data.path = None  # the stored path is where the recipe was built: keep one dataset source
        config = None
    else:
        config = args.config or DEFAULT_CONFIG
    cfg = load_config(config, args.overrides, base=base)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from lightning_marl.run import fit

    summary = fit(cfg)
    if summary:
        print_summary(summary)
    if cfg.get("online") is not None:  # fit, then fine-tune online: one config
        from lightning_marl.online import finetune_after_fit

        online = finetune_after_fit(cfg, summary)
        if online and online is not summary:
            print_summary(online)
            print(f"  env steps          {online.get('env_steps')} ({_fmt(online.get('env_steps_per_s'), 1)} env steps/s)")
    return 0


def print_summary(summary: dict, command: str = "fit") -> None:
    final, best = summary.get("final"), summary.get("best")
    lines = [
        "",
        f"lightning_marl {command}: {summary['algorithm']} on {summary['dataset']}",
        f"  iterations         {summary.get('iteration')}",
        f"  grad-steps/s       {_fmt(summary.get('grad_steps_per_s'), 1)}",
    ]
    if final:
        lines += [
            f"  final return       {_fmt(final['return_mean'])} ± {_fmt(final['return_std'])} "
            f"({final['episodes']} episodes)",
            f"  final normalised   {_fmt(final['normalised_score'], 1)}",
            f"  best return        {_fmt(best['return_mean'])} at iteration {best['iteration']} "
            f"(normalised {_fmt(best['normalised_score'], 1)})",
        ]
        if final.get("win_rate") is not None:
            lines.append(f"  final win rate     {_fmt(final['win_rate'])}")
    else:
        lines.append("  no env section: offline metrics only")
    for name, value in (summary.get("offline_metrics") or {}).items():
        if name.startswith("loss/"):
            lines.append(f"  final {name:<12} {value:.4g}")
    run_dir = summary["run_dir"]
    if summary.get("interrupted_at") is not None:
        lines.append(f"  interrupted at iteration {summary['interrupted_at']}: a checkpoint was saved; continue with")
        lines.append(f"    python -m lightning_marl fit resume={run_dir}")
    lines += [
        f"  run directory      {run_dir}",
        f"    config.yaml, eval.json, policy.pt, checkpoints/last.ckpt, logs/ (tensorboard --logdir {run_dir}/logs)",
    ]
    print("\n".join(lines))


def cmd_evaluate(args) -> int:
    from lightning_marl.run import evaluate

    result = evaluate(args.checkpoint, args.overrides)
    print(f"checkpoint {result['checkpoint']} (iteration {result['iteration']})")
    print(f"  return      {_fmt(result['return_mean'])} ± {_fmt(result['return_std'])} over {result['episodes']} episodes")
    print(f"  normalised  {_fmt(result['normalised_score'], 1)}")
    if result.get("win_rate") is not None:
        print(f"  win rate    {_fmt(result['win_rate'])}")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_plugins(args) -> int:
    from lightning_marl import registry

    errors = registry.discover()
    for kind in registry.KINDS:
        entries = registry.entries(kind)
        print(f"{kind}s ({len(entries)}):")
        for entry in entries:
            extra = ""
            if kind == "plugin":
                extra = f" [hooks: {', '.join(entry.obj.implemented_hooks()) or 'none'}]"
            elif kind == "algorithm":
                extra = f" [{', '.join(entry.obj.supports)}; calls {', '.join(entry.obj.hooks) or 'no hooks'}]"
            print(f"  {entry.name:<22} {entry.package:<24} {entry.description}{extra}")
        if not entries:
            print("  (none installed)")
    for error in errors:
        print(f"warning: plugin entry point failed to load: {error}", file=sys.stderr)
    return 0


def action_statistics(ds) -> list[str]:
    """Per-agent action statistics (and distinct joint actions for discrete tasks)."""
    import torch

    from lightning_marl.data import schema

    action = torch.as_tensor(ds.arrays.get(schema.ACTION))
    names = ds.spec.agent_names
    lines = []
    if ds.spec.discrete:
        counts = torch.nn.functional.one_hot(action, ds.spec.n_actions).sum(0)  # [N, K]
        for name, row in zip(names, counts.tolist()):
            lines.append(f"actions {name:<8} counts per action {row}")
        joint, joint_counts = torch.unique(action, dim=0, return_counts=True)
        top = sorted(zip(joint_counts.tolist(), joint.tolist()), reverse=True)[:5]
        lines.append(f"joint actions  {len(joint)} distinct; most frequent: "
                     + ", ".join(f"{tuple(a)} {c / len(action):.1%}" for c, a in top))
    else:
        mean, std = action.float().mean(0), action.float().std(0)
        for name, m, s in zip(names, mean.tolist(), std.tolist()):
            lines.append(f"actions {name:<8} mean {[round(v, 3) for v in m]} std {[round(v, 3) for v in s]} (in [-1, 1])")
    return lines


def cmd_dataset(args) -> int:
    from lightning_marl.data.dataset import load_dataset, verify_dataset

    if args.dataset_command == "info":
        ds = load_dataset(args.path, verify="never")
        meta = ds.metadata
        print(f"dataset {ds.id} at {ds.path}")
        print(f"  env            {meta.get('env')}")
        print(f"  quality        {meta.get('quality')}")
        print(f"  transitions    {meta['n_transitions']}  episodes {meta['n_episodes']}")
        r = meta["episode_returns"]
        print(f"  return         mean {_fmt(r['mean'])} std {_fmt(r['std'])} min {_fmt(r['min'])} max {_fmt(r['max'])}")
        print(f"  reference      {meta.get('reference_returns')}")
        print(f"  spec           {meta['spec']}")
        if ds.next_steps is not None:
            print(f"  next steps     stored once: {len(ds.next_sources)} fields, {len(ds.next_steps)} final rows")
        else:
            print("  next steps     arrays of their own (schema version 1)")
        for line in action_statistics(ds):
            print(f"  {line}")
        print(f"  checksum       {meta['checksum']}")
        from lightning_marl.data.card import plot_for_info

        plot_for_info(ds, getattr(args, "plot", None), getattr(args, "no_plot", False))
    elif args.dataset_command == "verify":
        ds = verify_dataset(args.path)
        print(f"ok: {ds.path} ({len(ds)} transitions, {len(ds.metadata['arrays'])} arrays, checksums match)")
    elif args.dataset_command == "recipes":
        from lightning_marl.collect.recipes import RECIPES, recipe_path

        for name, recipe in RECIPES.items():
            path = recipe_path(name)
            print(f"  {name:<22} {recipe.description}  [{'built: ' + str(path) if path.exists() else 'not built'}]")
    elif args.dataset_command == "build":
        from lightning_marl.collect.recipes import ensure_recipe

        print(ensure_recipe(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lightning_marl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a method on a dataset")
    fit.add_argument("--config", help="YAML file or shipped config name (default: the built-in default)")
    fit.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    fit.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint (or run directory) in its environment")
    ev.add_argument("checkpoint")
    ev.add_argument("overrides", nargs="*", help="e.g. eval.episodes=64 env.num_envs=16")
    ev.add_argument("--json", action="store_true", help="also print the result as JSON")
    ev.set_defaults(func=cmd_evaluate)

    plugins = sub.add_parser("plugins", help="list registered algorithms, environments, importers, plugins")
    plugins.set_defaults(func=cmd_plugins)

    dataset = sub.add_parser("dataset", help="inspect and check datasets")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    info = dsub.add_parser("info", help="print a dataset card")
    info.add_argument("path")
    info.add_argument("--plot", help="where to write the PNG histogram of episode returns (default: PATH/returns.png)")
    info.add_argument("--no-plot", action="store_true", help="do not write the histogram")
    verify = dsub.add_parser("verify", help="check sizes, dtypes, every checksum and the batch contract")
    verify.add_argument("path")
    info.set_defaults(func=cmd_dataset)
    verify.set_defaults(func=cmd_dataset)
    dsub.add_parser("recipes", help="list built-in dataset recipes").set_defaults(func=cmd_dataset)
    build = dsub.add_parser("build", help="build a built-in recipe into the data directory")
    build.add_argument("name")
    build.set_defaults(func=cmd_dataset)

    # Further commands live one per module in lightning_marl/commands/: each may define
    # ``add_commands(sub)`` (top-level commands) and ``add_dataset_commands(dsub)``.
    for module in command_modules():
        if hasattr(module, "add_commands"):
            module.add_commands(sub)
        if hasattr(module, "add_dataset_commands"):
            module.add_dataset_commands(dsub)
    return parser


def command_modules() -> list:
    """The modules of lightning_marl/commands/, in name order (imported lazily by the CLI)."""
    import importlib
    import pkgutil

    from lightning_marl import commands

    return [importlib.import_module(f"lightning_marl.commands.{info.name}")
            for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LightningMarlError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
