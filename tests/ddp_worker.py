"""Run by tests/test_ddp.py in a subprocess (Lightning's `ddp` re-executes this file for rank 1).

Usage: python tests/ddp_worker.py OUT_DIR key=value ...   (the overrides of a fit config)
Each rank writes its final parameters to OUT_DIR/rank<r>.pt.
"""

import sys
from pathlib import Path

import lightning as L
import torch


class DumpParameters(L.Callback):
    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, module):
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save({"state": state, "iteration": module.iteration, "threads": torch.get_num_threads(),
                    "every_loss_each_step": module.every_loss_each_step()},
                   self.out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    from lightning_marl.config import load_config
    from lightning_marl.run import fit

    out_dir = sys.argv[1]
    cfg = load_config(None, sys.argv[2:])
    fit(cfg, extra_callbacks=[DumpParameters(out_dir)])
