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


@pytest.mark.slow
def test_bf16_autocast_learns_as_well_as_float32(tmp_path):
    """OMIGA on the navigation recipe, 3 seeds per precision, 4000 iterations: the bf16 mean final
    normalised score lies within two seed standard deviations (plus 5 points) of the float32 mean."""
    import statistics

    scores = {}
    for precision in ("32-true", "bf16-mixed"):
        scores[precision] = [
            fit(load_config("default", [
                f"run_dir={tmp_path / f'{precision}-{seed}'}", "progress=false", f"seed={seed}",
                "algorithm.steps=4000", "eval.every=4000", f"trainer.precision={precision}",
            ]))["final"]["normalised_score"]
            for seed in range(3)
        ]
    print(scores)
    fp32, bf16 = scores["32-true"], scores["bf16-mixed"]
    noise = 2 * max(statistics.stdev(fp32), statistics.stdev(bf16)) + 5
    assert abs(statistics.mean(bf16) - statistics.mean(fp32)) <= noise, scores
