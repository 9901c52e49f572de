"""Mixer methods standardise the global state with dataset statistics (SMAX states reach ~32)."""

import torch

from lightning_marl.algorithms.qmix_cql import QMIXCQL
from lightning_marl.collect.matrix import matrix_game_transitions


def test_mixer_state_is_standardised_with_dataset_statistics():
    td, spec = matrix_game_transitions("climbing", [(0, 0), (1, 2)], [0.5, 0.5], n=64)
    td = td.clone()
    scale = torch.arange(1, spec.state_dim + 1, dtype=torch.float32) * 10
    td["state"] = torch.randn(64, spec.state_dim) * scale + 30
    td["next", "state"] = torch.randn(64, spec.state_dim) * scale + 30
    module = QMIXCQL.from_spec(spec, hidden=[8, 8])
    assert module.normalises_state
    module.fit_state_normaliser(td)
    standardised = module.mixer_state(td)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(spec.state_dim), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(0, unbiased=False), torch.ones(spec.state_dim), atol=1e-3, rtol=0)
    assert "state_mean" in module.state_dict()  # saved with checkpoints

    raw = QMIXCQL.from_spec(spec, hidden=[8, 8], normalise_state=False)
    assert torch.equal(raw.mixer_state(td), td["state"])
