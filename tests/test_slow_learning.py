"""Longer learning checks, run by hand (`pytest -m slow`); CI skips them."""

import pytest

from lightning_marl.config import load_config
from lightning_marl.run import fit


@pytest.mark.slow
def test_default_job_beats_the_dataset_on_vmas_navigation(tmp_path):
    """The README's main job (OMIGA, 15k iterations on the mixed-quality navigation recipe).

    The dataset's own episodes average a normalised score of about 79; the noiseless heuristic
    is 100 by definition. A broken OMIGA (or a broken evaluation) lands far below.
    """
    summary = fit(load_config("default", [f"run_dir={tmp_path / 'run'}", "progress=false"]))
    assert summary["final"]["normalised_score"] >= 85
    assert summary["iteration"] == 15000
