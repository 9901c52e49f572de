"""A plugin defined in a script: Gaussian noise on the observations of every training batch.

    python examples/custom_plugin.py                      # BC on the climbing game with and without it
    python examples/custom_plugin.py --std 0.5 --steps 300

A plugin subclasses ``Plugin``, declares its ``Params`` and overrides hooks; ``@register`` makes it
available by name to any config (``plugins=[{name: observation_noise, params: {std: 0.1}}]``).
Packaged with an entry point (see examples/toy_plugin and docs/writing-a-plugin.md) it is found
without importing this script.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from lightning_marl.config import load_config
from lightning_marl.data import schema
from lightning_marl.plugin import Plugin
from lightning_marl.registry import register
from lightning_marl.run import fit


@register("plugin", "observation_noise")
class ObservationNoise(Plugin):
    """Adds N(0, std²) noise to the observations of each batch (a data augmentation).

    The noise comes from the method's per-iteration generator, so a resumed run draws the same.
    """

    @dataclass
    class Params:
        std: float = 0.1

    def __init__(self, params=None):
        super().__init__(params)
        self.batches = 0

    def augment_batch(self, batch, module):
        self.batches += 1
        observation = batch.get(schema.OBS)
        noise = torch.randn(observation.shape, generator=module.rng, device=observation.device)
        return batch.set(schema.OBS, observation + self.params.std * noise)  # the batch is this step's own copy


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--std", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default="runs/example-plugin")
    args = parser.parse_args(argv)

    results = {}
    for name, plugins in (("without", "[]"), ("with", f"[{{name: observation_noise, params: {{std: {args.std}}}}}]")):
        summary = fit(load_config("bc/climbing", [
            f"algorithm.steps={args.steps}", f"plugins={plugins}", f"run_dir={args.out}/{name}", "progress=false",
        ]))
        module = summary["module"]
        results[name] = {"final_return": summary["final"]["return_mean"],
                         "batches": module.plugins[0].batches if module.plugins else 0}
        print(f"BC {name} observation noise: final return {results[name]['final_return']:.1f}, "
              f"batches augmented {results[name]['batches']}")
    return results


if __name__ == "__main__":
    main()
