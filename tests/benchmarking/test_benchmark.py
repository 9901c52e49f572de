"""benchmark/report end to end on a tiny suite: outputs, resume, retry-then-report, regeneration."""

import csv
import json
import os
import signal
import statistics

import lightning as L
import pytest

from lightning_marl.benchmarking import load_suite, run_suite, select, suite_from_dict
from lightning_marl.benchmarking import runner as runner_module
from lightning_marl.benchmarking.suite import run_overrides
from lightning_marl.cli import main
from lightning_marl.config import load_config
from lightning_marl.errors import ConfigError

TINY_RUN = ["algorithm.hidden=[16,16]", "algorithm.batch_size=32", "env.num_envs=4", "log_every=10",
            "checkpoint_every=20", "logger=csv"]


def tiny_suite(dataset, steps=40, methods=("bc", "omiga"), seeds=2, **extra):
    raw = {
        "name": "tiny", "seeds": seeds, "budget": {"steps": steps, "eval_every": 20, "eval_episodes": 4},
        "overrides": TINY_RUN,
        "methods": list(methods),
        "datasets": [{"path": str(dataset.path), "name": "climbing",
                      "method_overrides": {"omiga": ["algorithm.alpha=1.0", "algorithm.mixer_hidden=8"]}
                      if "omiga" in methods else {}}],
    }
    raw.update(extra)
    return suite_from_dict(raw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, climbing_dataset):
    """The tiny suite run once (2 methods × 1 dataset × 2 seeds × 40 iterations), in this process."""
    out = tmp_path_factory.mktemp("bench") / "out"
    lines = []
    outputs = run_suite(tiny_suite(climbing_dataset), out, jobs=1, log=lines.append)
    return out, outputs, lines


def test_tiny_suite_writes_runs_tables_and_curves(tiny_run):
    out, outputs, lines = tiny_run
    assert lines[0].startswith("suite tiny: 4 runs, 0 already finished (skipped), 4 to run")
    for method in ("bc", "omiga"):
        for seed in (0, 1):
            run = out / "climbing" / method / f"seed{seed}"
            for name in ("config.yaml", "eval.json", "benchmark.json", "logs/metrics.csv"):
                assert (run / name).exists(), (run, name)
            stored = json.loads((run / "eval.json").read_text())
            assert [e["iteration"] for e in stored["history"]] == [20, 40]
            assert stored["final"]["episodes"] == 4
            assert f"seed: {seed}" in (run / "config.yaml").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [
        ("bc", "0", "finished"), ("bc", "1", "finished"), ("omiga", "0", "finished"), ("omiga", "1", "finished")]
    # the table's cells are the mean and population std of the stored final scores
    markdown = (out / "results.md").read_text()
    cells = {}
    for method in ("bc", "omiga"):
        scores = [json.loads((out / "climbing" / method / f"seed{s}" / "eval.json").read_text())["final"]
                  ["normalised_score"] for s in (0, 1)]
        cells[method] = f"{statistics.mean(scores):.1f} ± {statistics.pstdev(scores):.1f}"
        assert cells[method] in markdown
    best = max(cells, key=lambda m: float(cells[m].split()[0]))
    assert f"**{cells[best]}**" in markdown.split("## Best")[0]
    assert "Evaluation protocol" in markdown and "40 iterations, evaluated every 20 iterations" in markdown
    assert all("40 iterations" in r["protocol"] for r in rows)
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"].startswith("Evaluation protocol") and len(results["runs"]) == 4
    summary = {(c["dataset"], c["method"]): c for c in results["summary"]}
    assert summary[("climbing", "bc")]["n"] == 2 and summary[("climbing", "bc")]["metric"] == "normalised"
    png = (out / "curves" / "climbing.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "![climbing](curves/climbing.png)" in markdown


def test_second_invocation_skips_every_finished_run(tiny_run, climbing_dataset, monkeypatch):
    out, _, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("climbing/*/seed*/eval.json")}

    def must_not_run(spec, fresh=False):
        raise AssertionError(f"{spec.key} was run again")

    monkeypatch.setattr(runner_module, "execute_run", must_not_run)
    lines = []
    run_suite(tiny_suite(climbing_dataset), out, jobs=1, log=lines.append)
    assert lines[0].startswith("suite tiny: 4 runs, 4 already finished (skipped), 0 to run")
    assert {p: p.stat().st_mtime_ns for p in out.glob("climbing/*/seed*/eval.json")} == before


def test_report_regenerates_identical_tables(tiny_run, capsys):
    out, _, _ = tiny_run
    names = ("results.md", "results.csv", "results.json")
    original = {name: (out / name).read_text() for name in names}
    for name in names:
        (out / name).unlink()
    (out / "curves" / "climbing.png").unlink()
    assert main(["report", str(out)]) == 0
    assert {name: (out / name).read_text() for name in names} == original
    assert (out / "curves" / "climbing.png").exists()
    assert capsys.readouterr().out == original["results.md"]


def test_changed_settings_are_refused_not_mixed(tiny_run, climbing_dataset):
    out, _, _ = tiny_run
    with pytest.raises(ConfigError, match="algorithm.steps=80.*another --out"):
        run_suite(tiny_suite(climbing_dataset, steps=80), out, jobs=1, log=lambda line: None)


def test_a_broken_run_is_retried_once_then_reported_and_the_suite_goes_on(tmp_path, climbing_dataset, monkeypatch):
    """bc seed0 fails once (injected) and succeeds on its retry; `nan_lr` (bc with lr=nan, which Adam refuses) fails for real twice."""
    suite = tiny_suite(climbing_dataset, steps=20, seeds=1,
                       methods=["bc", {"name": "bc", "label": "nan_lr", "overrides": ["algorithm.lr=nan"]}])
    real = runner_module.execute_run
    calls = []

    def flaky(spec, fresh=False):
        calls.append((spec.key, fresh))
        if spec.method == "bc" and len([c for c in calls if c[0] == spec.key]) == 1:
            return {"ok": False, "error": "RuntimeError: injected", "seconds": 0.0}
        return real(spec, fresh)

    monkeypatch.setattr(runner_module, "execute_run", flaky)
    lines = []
    outputs = run_suite(suite, tmp_path / "out", jobs=1, log=lines.append)
    assert calls == [("climbing/bc/seed0", False), ("climbing/bc/seed0", True),
                     ("climbing/nan_lr/seed0", False), ("climbing/nan_lr/seed0", True)]
    rows = {r["method"]: r for r in outputs["rows"]}
    assert rows["bc"]["status"] == "finished" and rows["bc"]["attempts"] == 2
    assert rows["nan_lr"]["status"] == "failed" and rows["nan_lr"]["attempts"] == 2
    assert rows["nan_lr"]["error"] == "ValueError: Invalid learning rate: nan"
    log = (tmp_path / "out" / "climbing" / "nan_lr" / "seed0" / "output.log").read_text()
    assert log.count("Traceback") == 2 and log.count("Invalid learning rate") >= 2
    assert any("attempt 1/2 failed" in line and "retrying once" in line for line in lines)
    assert any("attempt 2/2 failed" in line and "recorded as failed" in line for line in lines)
    markdown = outputs["markdown"]
    assert "failed (1/1 seeds)" in markdown and "climbing/nan_lr/seed0: failed after 2 attempts: ValueError" in markdown
    csv_rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [(r["method"], r["status"], r["attempts"]) for r in csv_rows] == [("bc", "finished", "2"),
                                                                          ("nan_lr", "failed", "2")]


class SignalAt(L.Callback):
    """Sends this process SIGINT right after iteration ``iteration``, inside the training step as a
    signal from outside arrives: GracefulStop ends the run at the end of that Lightning batch (which
    ends at every multiple of the evaluation period) with a checkpoint."""

    def __init__(self, iteration):
        self.iteration = iteration

    def on_train_start(self, trainer, module):
        step = module.train_step

        def train_step(batch):
            stats = step(batch)
            if module.iteration == self.iteration:
                os.kill(os.getpid(), signal.SIGINT)
            return stats

        module.train_step = train_step


def test_an_interrupted_suite_resumes_from_the_checkpoint(tmp_path, climbing_dataset, monkeypatch):
    import lightning_marl.run as run_module

    real_fit = run_module.fit
    fits = []

    def fit(cfg, **kwargs):
        fits.append(cfg.resume)
        callbacks = [SignalAt(19)] if len(fits) == 1 else []  # seen by GracefulStop at iteration 20
        return real_fit(cfg, extra_callbacks=callbacks)

    monkeypatch.setattr(run_module, "fit", fit)
    suite = tiny_suite(climbing_dataset, steps=40, methods=["bc"], seeds=2)
    lines = []
    first = run_suite(suite, tmp_path / "out", jobs=1, log=lines.append)
    assert [r["status"] for r in first["rows"]] == ["interrupted", "pending"]  # the suite stops after Ctrl-C
    assert "interrupted" in lines[-1]
    run = tmp_path / "out" / "climbing" / "bc" / "seed0"
    assert json.loads((run / "eval.json").read_text())["interrupted_at"] == 20
    second = run_suite(suite, tmp_path / "out", jobs=1, log=lines.append)
    assert fits == [None, str(run), None]  # seed0 resumed from its checkpoint, seed1 started
    assert [r["status"] for r in second["rows"]] == ["finished", "finished"]
    stored = json.loads((run / "eval.json").read_text())
    assert [e["iteration"] for e in stored["history"]] == [20, 40] and stored["iteration"] == 40
    assert stored["best"] == max(stored["history"], key=lambda e: e["return_mean"])


@pytest.mark.slow  # two spawned workers import torch and Lightning: ~10 s on an idle 2-core machine
def test_parallel_runs_in_spawned_processes(tmp_path, climbing_dataset):
    suite = tiny_suite(climbing_dataset, steps=20, methods=["bc"], seeds=2)
    lines = []
    outputs = run_suite(suite, tmp_path / "out", jobs=2, log=lines.append)
    assert [r["status"] for r in outputs["rows"]] == ["finished", "finished"]
    assert "to run with --jobs 2" in lines[0]
    sequential = run_suite(suite, tmp_path / "seq", jobs=1, log=lambda line: None)
    # same seeds, same data stream, same evaluation: the same scores whichever process ran them
    assert [r["final_return"] for r in outputs["rows"]] == [r["final_return"] for r in sequential["rows"]]


def test_suite_files_are_validated_before_any_work(climbing_dataset):
    with pytest.raises(ConfigError, match="unknown key 'seed'.*Did you mean seeds"):
        suite_from_dict({"seed": 3, "methods": ["bc"], "datasets": ["climbing_coordinated"]})
    with pytest.raises(ConfigError, match="sets algorithm.steps, which the suite owns"):
        suite_from_dict({"methods": [{"name": "bc", "overrides": ["algorithm.steps=5"]}],
                         "datasets": ["climbing_coordinated"]})
    with pytest.raises(ConfigError, match="names method 'iql', which is not in methods"):
        suite_from_dict({"methods": ["bc"], "datasets": [{"recipe": "climbing_coordinated",
                                                          "method_overrides": {"iql": []}}]})
    with pytest.raises(ConfigError, match="exactly one of recipe"):
        suite_from_dict({"methods": ["bc"], "datasets": [{"name": "x"}]})
    # a bad override stops the whole suite before the first run, naming the run
    bad = tiny_suite(climbing_dataset, overrides=[*TINY_RUN, "algorithm.alhpa=1"])
    with pytest.raises(ConfigError, match="run climbing/bc/seed0: unknown config key 'algorithm.alhpa'"):
        run_suite(bad, "unused", jobs=1, log=lambda line: None)


def test_shipped_suites_load_and_their_runs_configure(tmp_path, monkeypatch):
    from pathlib import Path

    small = load_suite("small")
    assert small.seeds == [0, 1, 2] and [d.name for d in small.datasets] == ["vmas_navigation", "climbing_coordinated"]
    for dataset in small.datasets:
        for method in small.methods:
            load_config(None, list(run_overrides(small, dataset, method, 0, Path("x"))))  # raises if invalid
    full = load_suite("full")
    assert full.seeds == [0, 1, 2, 3, 4] and len(full.datasets) > 30
    # without the converted datasets, the full suite's path datasets are missing, not errors
    monkeypatch.setenv("LIGHTNING_MARL_DATA", str(tmp_path))
    path_only = select(full, datasets=[d.name for d in full.datasets if d.path][:3])
    plan = runner_module.plan_runs(path_only, tmp_path / "out")
    assert plan.runs == [] and len(plan.missing) == 3
    assert all("dataset convert --from" in why for why in plan.missing.values())


def test_cli_exit_status_and_errors(tmp_path, climbing_dataset, capsys):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(
        "name: cli\nseeds: 1\nbudget: {steps: 10, eval_episodes: 2}\n"
        f"overrides: {json.dumps(TINY_RUN)}\n"
        + "methods: [bc, {name: bc, label: nan_lr, overrides: [algorithm.lr=nan]}]\n"
        f"datasets: [{{path: {climbing_dataset.path}, name: climbing}}]\n")
    assert main(["benchmark", str(suite_file), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "2 runs" in capsys.readouterr().out and not (tmp_path / "out").exists()
    assert main(["benchmark", str(suite_file), "--out", str(tmp_path / "out")]) == 1  # a run failed
    out = capsys.readouterr().out
    assert "climbing/nan_lr/seed0: failed after 2 attempts" in out and "| climbing |" in out
    assert main(["report", str(tmp_path)]) == 2  # not a benchmark directory
    assert "no plan.json" in capsys.readouterr().err
    assert main(["benchmark", "no-such-suite"]) == 2
    assert "shipped suites: full, small" in capsys.readouterr().err


def test_parts_of_a_suite_run_separately_are_reported_together(tmp_path, climbing_dataset):
    suite = tiny_suite(climbing_dataset, steps=20, seeds=1)
    run_suite(select(suite, methods=["bc"]), tmp_path / "out", jobs=1, log=lambda line: None)
    outputs = run_suite(select(suite, methods=["omiga"]), tmp_path / "out", jobs=1, log=lambda line: None)
    assert [(r["method"], r["status"]) for r in outputs["rows"]] == [("bc", "finished"), ("omiga", "finished")]
    assert "| dataset | bc | omiga |" in outputs["markdown"]
