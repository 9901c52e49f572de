"""Training samples/s with 1 and 2 DDP processes on this machine (Lightning's plain `ddp`, CPU/gloo).

Each configuration runs `fit` (OMIGA by default, without evaluation) in its own process for
--steps iterations at the per-rank batch --batch, and reads the grad-steps/s the run logged. One
DDP process consumes `batch` samples per step, two consume `2 x batch` (the effective batch; see
docs/multi-gpu.md for the learning-rate rule). On a 2-core machine the two processes split the
cores (one thread each, see callbacks.CPUThreadBudget) and also pay an all-reduce of the gradients
every step, so expect less than 2x; on a multi-GPU node each process owns a device.

Run:
    python benchmarks/scaling.py                       # the built-in navigation recipe
    python benchmarks/scaling.py --algorithm iql --steps 3000 --batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = """
import json, sys
from lightning_marl.config import load_config
from lightning_marl.run import fit
if __name__ == "__main__":
    summary = fit(load_config(None, sys.argv[2:]))
    if summary and summary.get("grad_steps_per_s") is not None:
        open(sys.argv[1], "w").write(json.dumps({"grad_steps_per_s": summary["grad_steps_per_s"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", default="omiga")
    parser.add_argument("--recipe", default="vmas_navigation")
    parser.add_argument("--dataset", default=None, help="a dataset path instead of --recipe")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    data = f"data.path={args.dataset}" if args.dataset else f"data.recipe={args.recipe}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "worker.py"
        worker.write_text(WORKER)
        for processes in args.processes:
            out = Path(tmp) / f"result{processes}.json"
            overrides = [data, f"algorithm.name={args.algorithm}", f"algorithm.steps={args.steps}",
                         f"algorithm.batch_size={args.batch}", f"run_dir={Path(tmp) / f'run{processes}'}",
                         "progress=false", f"log_every={max(1, args.steps // 4)}", f"checkpoint_every={args.steps}",
                         "env=null", f"trainer.devices={processes}", "trainer.accelerator=cpu"]
            if processes > 1:
                overrides.append("trainer.strategy=ddp")
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            subprocess.run([sys.executable, str(worker), str(out), *overrides], check=True, env=env)
            steps_per_s = json.loads(out.read_text())["grad_steps_per_s"]
            rows.append((processes, steps_per_s, steps_per_s * args.batch * processes))
    print(f"\n{args.algorithm} on {args.dataset or args.recipe}, per-rank batch {args.batch}, {args.steps} steps, "
          f"{os.cpu_count()} CPUs")
    print("| processes | effective batch | grad-steps/s | samples/s | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for processes, steps_per_s, samples in rows:
        print(f"| {processes} | {args.batch * processes} | {steps_per_s:.1f} | {samples:.0f} | {samples / rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
