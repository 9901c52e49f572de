"""Train a method on a dataset, evaluate its checkpoint again, and act with the saved policy.

    python examples/fit_and_evaluate.py                                   # OMIGA, built-in VMAS navigation data
    python examples/fit_and_evaluate.py --config bc/climbing --steps 500  # BC on the climbing game, seconds

What it shows: a shipped config plus overrides (``load_config``), ``fit`` (train, evaluate every
``eval.every`` iterations and at the end, save a run directory), ``evaluate`` (rebuild the policy
from the checkpoint alone and roll it out again), ``load_policy`` (the decentralised actors,
without the training code).
"""

from __future__ import annotations

import argparse

import torch

from lightning_marl import load_policy
from lightning_marl.config import load_config
from lightning_marl.run import evaluate, fit


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="omiga/vmas_navigation", help="a shipped config name or a YAML file")
    parser.add_argument("--steps", type=int, help="training iterations (default: the config's)")
    parser.add_argument("--episodes", type=int, default=32, help="evaluation episodes")
    parser.add_argument("--run-dir", default="runs/example-fit")
    args = parser.parse_args(argv)

    overrides = [f"run_dir={args.run_dir}", f"eval.episodes={args.episodes}", "progress=false"]
    if args.steps is not None:
        overrides += [f"algorithm.steps={args.steps}", "eval.every=0", f"checkpoint_every={args.steps}"]
    summary = fit(load_config(args.config, overrides))
    final = summary["final"]
    print(f"trained {summary['algorithm']} on {summary['dataset']} for {summary['iteration']} iterations: "
          f"final return {final['return_mean']:.2f}, normalised {final['normalised_score']:.1f}")

    again = evaluate(args.run_dir, [f"eval.episodes={args.episodes}"])   # from checkpoints/last.ckpt alone
    print(f"evaluated the checkpoint again: return {again['return_mean']:.2f} over {again['episodes']} episodes")

    policy = load_policy(args.run_dir)                                   # reads policy.pt
    observation = torch.zeros(policy.spec.n_agents, policy.spec.obs_dim)  # [N, O]; or [B, N, O]
    actions = policy.act(observation)
    print(f"the saved policy's actions for an all-zero observation: {actions.tolist()}")
    return {"fit": {k: v for k, v in summary.items() if k != "module"}, "evaluate": again, "actions": actions}


if __name__ == "__main__":
    main()
