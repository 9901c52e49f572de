"""Learning on the climbing game: OMIGA finds the minority optimum, BC copies the majority."""

import torch

from lightning_marl.algorithms.bc import BC
from lightning_marl.algorithms.omiga import OMIGA
from lightning_marl.data.datamodule import OfflineDataModule

OBS = torch.zeros(1, 2, 1)
MASK = torch.ones(1, 2, 3, dtype=torch.bool)


def greedy_joint_action(method, dataset, seed, steps, **hparams):
    torch.manual_seed(seed)
    module = method.from_spec(dataset.spec, hidden=[64, 64], **hparams)
    datamodule = OfflineDataModule(dataset, batch_size=128, seed=seed)
    for iteration in range(steps):
        module.train_step(datamodule.sample(iteration))
    return tuple(module.act(OBS, MASK)[0].tolist())


def test_omiga_picks_the_minority_optimum(climbing_dataset):
    picks = [greedy_joint_action(OMIGA, climbing_dataset, seed, 500, alpha=1.0, mixer_hidden=32) for seed in range(5)]
    assert sum(p == (0, 0) for p in picks) >= 4, picks


def test_bc_picks_the_majority_joint_action(climbing_dataset):
    picks = [greedy_joint_action(BC, climbing_dataset, seed, 300) for seed in range(5)]
    assert all(p == (1, 1) for p in picks), picks
