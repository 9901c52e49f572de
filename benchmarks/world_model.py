"""World models on held-out data, and the cost of ``augment_batch`` in a training step.

For one dataset (a path, or a built-in recipe; default vmas_navigation) this fits, on the same
training episodes with the same seed and number of iterations:

* LOGO (``logo``), the plugin's default sizes unless overridden;
* the MOPO-style ensemble (``mopo_ensemble``);
* a single global MLP (s, o, a) -> (s', o', r) with about LOGO's parameter count;

and prints, on the held-out episodes: next-state mean squared error in standardised units
(state spread = 1) beside "no change" (s' = s), the same for observations, the Spearman rank
correlation between u and the model's own squared next-state error, and the mean u at the
dataset's actions against u at uniformly random actions and at the negated dataset actions.

Then it times ``MACQL.train_step`` (or ``--method``) with and without the LOGO plugin on the
same batches, and ``augment_batch`` alone (a refresh excluded / the refresh alone).

Run:
    python benchmarks/world_model.py --iterations 3000
    python benchmarks/world_model.py --data PATH --method qmix_cql
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402
from lightning_marl_plugins.world_model import LOGO, LOGOParams, MOPOEnsemble, MOPOParams  # noqa: E402
from lightning_marl_plugins.world_model.diagnostics import (  # noqa: E402
    GlobalBaseline,
    parameter_count,
    spearman,
    width_for,
)

from lightning_marl import registry  # noqa: E402
from lightning_marl.collect.recipes import ensure_recipe  # noqa: E402
from lightning_marl.data.dataset import load_dataset  # noqa: E402


def held_out_report(plugin, rows, module) -> dict:
    result = plugin.evaluate_rows(rows)
    report = {
        "params": parameter_count(plugin.model),
        "state_mse": float(result["state_error"].mean()),
        "no_change_state_mse": float(result["no_change_state_error"].mean()),
        "obs_mse": float(result["obs_error"].mean()),
        "no_change_obs_mse": float(result["no_change_obs_error"].mean()),
        "spearman_u_error": spearman(result["uncertainty"], result["state_error"])
        if result["uncertainty"].abs().sum() > 0 else float("nan"),
        "u_data": float(result["uncertainty"].mean()),
    }
    if not plugin.spec.discrete and result["uncertainty"].abs().sum() > 0:
        report.update(far_action_uncertainty(plugin, rows))
    return report


@torch.no_grad()
def far_action_uncertainty(plugin, rows, chunk: int = 8192) -> dict:
    """Mean u at uniformly random actions and at the negated dataset actions (same states)."""
    data = plugin.transitions.select(*plugin._model_keys())
    g = torch.Generator().manual_seed(0)
    random_u, negated_u = [], []
    for start in range(0, len(rows), chunk):
        t = plugin.model_tensors(data[rows[start:start + chunk]])
        uniform = torch.rand(t["action"].shape, generator=g) * 2 - 1
        random_u.append(plugin.predict_mean(t["observation"], uniform, t["state"])["uncertainty"])
        negated_u.append(plugin.predict_mean(t["observation"], -t["action"], t["state"])["uncertainty"])
    return {"u_random_actions": float(torch.cat(random_u).mean()), "u_negated_actions": float(torch.cat(negated_u).mean())}


def time_steps(module, batches, repeats: int) -> float:
    start = time.perf_counter()
    for i in range(repeats):
        module.train_step(batches[i % len(batches)])
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="dataset directory (default: the vmas_navigation recipe)")
    parser.add_argument("--recipe", default="vmas_navigation")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--method", default=None, help="default: macql (continuous) / qmix_cql (discrete)")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method-hidden", type=int, nargs="*", default=None, help="the method's hidden sizes")
    parser.add_argument("--timing-only", action="store_true", help="skip the held-out table (fits LOGO briefly)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data or ensure_recipe(args.recipe))
    spec = dataset.spec
    method = registry.get("algorithm", args.method or ("qmix_cql" if spec.discrete else "macql"))
    torch.manual_seed(args.seed)

    logo = LOGO(LOGOParams(iterations=args.iterations))
    mopo = MOPOEnsemble(MOPOParams(iterations=args.iterations))
    args.method_kwargs = {"hidden": args.method_hidden} if args.method_hidden else {}
    logo_module = method.from_spec(spec, plugins=[logo], **args.method_kwargs)
    logo_module.seed = args.seed
    reports, fit_seconds = {}, {}
    if args.timing_only:
        logo.params.iterations = 10
        logo.setup(logo_module, dataset)
        logo.pretrain(dataset, logo_module)
    for name, plugin in (() if args.timing_only else (("logo", logo), ("mopo_ensemble", mopo))):
        module = logo_module if plugin is logo else method.from_spec(spec, plugins=[plugin])
        module.seed = args.seed
        plugin.setup(module, dataset)
        start = time.perf_counter()
        plugin.pretrain(dataset, module)
        fit_seconds[name] = time.perf_counter() - start
        reports[name] = held_out_report(plugin, plugin.split(args.seed)[1], module)
        reports[name]["threshold_C"] = plugin.threshold
    if not args.timing_only:
        print_held_out_table(args, dataset, method, logo, reports, fit_seconds)
    time_augmentation(args, dataset, method, logo, logo_module)


def print_held_out_table(args, dataset, method, logo, reports, fit_seconds) -> None:
    spec = dataset.spec
    width = width_for(parameter_count(logo.model), spec)
    baseline = GlobalBaseline(LOGOParams(iterations=args.iterations, hidden=[width, width]))
    module = method.from_spec(spec)
    module.seed = args.seed
    baseline.setup(module, dataset)
    start = time.perf_counter()
    baseline.pretrain(dataset, module)
    fit_seconds["global_mlp"] = time.perf_counter() - start
    reports[f"global_mlp (2x{width})"] = held_out_report(baseline, baseline.split(args.seed)[1], module)

    print(f"dataset {dataset.id}: {len(dataset)} transitions, {spec.n_agents} agents, obs {spec.obs_dim}, "
          f"state {spec.state_dim}; {args.iterations} fitting iterations, seed {args.seed}")
    columns = ["params", "state_mse", "no_change_state_mse", "obs_mse", "no_change_obs_mse", "spearman_u_error",
               "u_data", "u_random_actions", "u_negated_actions", "threshold_C"]
    print("| model | " + " | ".join(columns) + " | fit s |")
    print("|---" * (len(columns) + 2) + "|")
    for (name, report), seconds in zip(reports.items(), fit_seconds.values()):
        cells = [f"{report[c]:.4g}" if isinstance(report.get(c), float) else str(report.get(c, "-")) for c in columns]
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.1f} |")


def time_augmentation(args, dataset, method, logo, logo_module) -> None:
    """Steps/s of the method with and without LOGO on the same batches; augment_batch alone; one refresh."""
    spec = dataset.spec
    batches = [dataset.transitions[torch.randint(len(dataset), (128,), generator=torch.Generator().manual_seed(i))]
               .to_tensordict() for i in range(16)]
    plain = method.from_spec(spec, **args.method_kwargs)
    time_steps(plain, batches, 20)
    time_steps(logo_module, batches, 20)
    logo.params.rollout_every = 10**9  # time the steady state; the refresh is timed separately below
    plain_s = time_steps(plain, batches, args.steps)
    with_s = time_steps(logo_module, batches, args.steps)
    start = time.perf_counter()
    for i in range(args.steps):
        logo.augment_batch(batches[i % len(batches)], logo_module)
    augment_s = (time.perf_counter() - start) / args.steps
    start = time.perf_counter()
    logo.refresh(logo_module)
    refresh_s = time.perf_counter() - start
    print(f"\n{method.__name__} step, batch 128: plain {1e3 * plain_s:.2f} ms, with LOGO {1e3 * with_s:.2f} ms; "
          f"augment_batch alone {1e3 * augment_s:.3f} ms ({100 * augment_s / with_s:.1f} % of the step); "
          f"one refresh ({logo.params.rollout_batch} branches x H={logo.horizon}) {1e3 * refresh_s:.1f} ms, "
          f"every {LOGOParams().rollout_every} steps = {1e3 * refresh_s / LOGOParams().rollout_every:.3f} ms/step; "
          f"{torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
