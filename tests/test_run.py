"""fit end to end in-process: run directory contents, resume equivalence, determinism, policies."""

import json
from dataclasses import dataclass

import lightning as L
import pytest
import torch

from lightning_marl import load_policy
from lightning_marl.config import load_config
from lightning_marl.errors import ConfigError, TrainingError
from lightning_marl.plugin import Plugin
from lightning_marl.registry import register
from lightning_marl.run import evaluate, fit


def _cfg(dataset, run_dir, *extra):
    return load_config(None, [
        "algorithm.name=omiga", "algorithm.alpha=1.0", "algorithm.steps=20", "algorithm.batch_size=32",
        "algorithm.hidden=[16,16]", "algorithm.mixer_hidden=8", f"data.path={dataset.path}",
        "env.name=matrix", "env.task=climbing", "env.num_envs=4", "eval.episodes=8", "eval.every=10",
        f"run_dir={run_dir}", "progress=false", "log_every=5", "checkpoint_every=10", *extra,
    ])


class CrashAt(L.Callback):
    """Stands in for a killed process: dies right after the checkpoint at ``iteration``."""

    def __init__(self, iteration):
        self.iteration = iteration

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.iteration == self.iteration:
            raise RuntimeError("killed (simulated)")


def _checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_same_training_state(a, b):
    """Two checkpoints hold bit-identical weights and Adam states."""
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        for (_, sa), (_, sb) in zip(sorted(opt_a["state"].items()), sorted(opt_b["state"].items())):
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["step"], sb["step"])


def test_fit_writes_a_complete_run_directory(tmp_path, climbing_dataset):
    summary = fit(_cfg(climbing_dataset, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.yaml", "eval.json", "policy.pt", "dataset.json", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    assert list((run / "logs").glob("events.out.tfevents.*"))
    evaluation = json.loads((run / "eval.json").read_text())
    assert [e["iteration"] for e in evaluation["history"]] == [10, 20]
    assert evaluation["final"]["episodes"] == 8
    # a deterministic greedy policy in a one-step game: every episode has one of the 9 payoffs
    assert evaluation["final"]["return_std"] == 0.0
    assert evaluation["final"]["return_mean"] in {11, -30, 0, 7, 6, 5}
    expected_score = 100 * (evaluation["final"]["return_mean"] + 31 / 9) / (11 + 31 / 9)
    assert evaluation["final"]["normalised_score"] == pytest.approx(expected_score)
    assert summary["iteration"] == 20 and summary["grad_steps_per_s"] > 0
    dataset_ref = json.loads((run / "dataset.json").read_text())
    assert dataset_ref["checksum"] == climbing_dataset.checksum

    checkpoint = _checkpoint(run)  # loads without unpickling code
    state = checkpoint["lightning_marl"]
    assert state["iteration"] == 20 and "alpha: 1.0" in state["config_yaml"]
    assert state["dataset"]["reference_returns"]["expert"] == 11.0

    policy = load_policy(run)
    from_ckpt = load_policy(run / "checkpoints" / "last.ckpt")
    obs, mask = torch.zeros(2, 1), torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(policy.act(obs, mask), from_ckpt.act(obs, mask))
    assert policy.act(obs, mask).shape == (2,)

    result = evaluate(run / "checkpoints" / "last.ckpt", ["eval.episodes=4"])
    assert result["episodes"] == 4 and result["return_mean"] == evaluation["final"]["return_mean"]


@pytest.mark.parametrize("algorithm, data", [("omiga", "climbing_dataset"), ("macql", "continuous_dataset"),
                                             ("omar", "continuous_dataset")])
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path, algorithm, data, request):
    dataset = request.getfixturevalue(data)

    def cfg(run_dir, *extra):
        return load_config(None, [
            f"algorithm.name={algorithm}", "algorithm.steps=20", "algorithm.batch_size=16", "algorithm.hidden=[16,16]",
            f"data.path={dataset.path}", "env=null", f"run_dir={run_dir}", "progress=false", "log_every=5",
            "checkpoint_every=10", "seed=3", *extra,
        ])

    full = tmp_path / "full"
    fit(cfg(full))
    broken = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="simulated"):
        fit(cfg(broken), extra_callbacks=[CrashAt(10)])
    assert _checkpoint(broken)["lightning_marl"]["iteration"] == 10
    fit(cfg(broken, f"resume={broken}"))

    a, b = _checkpoint(full), _checkpoint(broken)
    assert b["lightning_marl"]["iteration"] == 20
    _assert_same_training_state(a, b)


class BatchEnds(L.Callback):
    def __init__(self):
        self.iterations = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.iterations.append(module.iteration)


def test_iterations_per_batch_changes_nothing_but_the_speed(tmp_path, climbing_dataset):
    """Grouped iterations run on the same batches (batch k is drawn for iteration k either way);
    Lightning batches end at every multiple of the checkpoint and evaluation periods and at the
    last iteration, where the callbacks act as with one iteration per batch."""
    runs = {}
    for per_batch in (1, 6):
        ends = BatchEnds()
        summary = fit(_cfg(climbing_dataset, tmp_path / f"k{per_batch}", "algorithm.steps=40", "eval.every=17",
                           "checkpoint_every=13", "log_every=100", f"iterations_per_batch={per_batch}"),
                      extra_callbacks=[ends])
        runs[per_batch] = (_checkpoint(tmp_path / f"k{per_batch}"), summary, ends.iterations)
    (one, one_summary, one_ends), (six, six_summary, six_ends) = runs[1], runs[6]
    assert one_ends == list(range(1, 41))
    assert six_ends == [6, 12, 13, 17, 23, 26, 32, 34, 39, 40]
    assert [e["iteration"] for e in six_summary["history"]] == [e["iteration"] for e in one_summary["history"]] == [17, 34, 40]
    assert [e["return_mean"] for e in six_summary["history"]] == [e["return_mean"] for e in one_summary["history"]]
    assert six["lightning_marl"]["iteration"] == 40
    _assert_same_training_state(one, six)


def test_deterministic_runs_are_bit_identical(tmp_path, continuous_dataset):
    def run(name):
        cfg = load_config(None, [
            "algorithm.name=omiga", "algorithm.steps=15", "algorithm.batch_size=16", "algorithm.hidden=[16,16]",
            f"data.path={continuous_dataset.path}", f"run_dir={tmp_path / name}", "progress=false",
            "deterministic=true", "seed=7",
        ])
        return fit(cfg)["module"].state_dict()

    first, second = run("a"), run("b")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_fit_without_env_reports_offline_metrics(tmp_path, continuous_dataset):
    cfg = load_config(None, [
        "algorithm.name=bc", "algorithm.steps=6", "algorithm.hidden=[8,8]", f"data.path={continuous_dataset.path}",
        f"run_dir={tmp_path / 'r'}", "progress=false", "log_every=3", "logger=csv",
    ])
    summary = fit(cfg)
    assert summary["final"] is None and summary["history"] == []
    assert set(summary["offline_metrics"]) >= {"loss/policy", "grad_norm/policy", "grad_steps_per_s"}
    metrics = (tmp_path / "r" / "logs" / "metrics.csv").read_text().splitlines()
    assert "loss/policy" in metrics[0] and len(metrics) == 3  # header + iterations 3 and 6


def test_env_defaults_to_the_one_recorded_in_the_dataset(tmp_path, climbing_dataset):
    from lightning_marl.run import resolve_env

    cfg = load_config("default", [f"data.path={climbing_dataset.path}"])  # env: {name: dataset}
    resolved = resolve_env(cfg, climbing_dataset)
    assert (resolved.env.name, resolved.env.task, resolved.env.num_envs) == ("matrix", "climbing", 32)
    offline = resolve_env(load_config(None, ["data.path=/x", "env=null"]), climbing_dataset)
    assert offline.env is None


def test_bad_inputs_fail_before_training(tmp_path, climbing_dataset):
    with pytest.raises(ConfigError, match="no dataset"):
        fit(load_config(None, ["progress=false"]))
    with pytest.raises(ConfigError, match="does not support|no algorithm"):
        fit(load_config(None, ["algorithm.name=nope"]))
    with pytest.raises(ConfigError, match="no checkpoint"):
        fit(_cfg(climbing_dataset, tmp_path / "x", f"resume={tmp_path / 'nothing'}"))


@register("plugin", "test_nan_at_iteration")
class NaNAtIteration(Plugin):
    """Turns every reward into NaN from iteration ``at`` on (stands in for a diverging run)."""

    @dataclass
    class Params:
        at: int = 13

    def augment_batch(self, batch, module):
        if module.iteration >= self.params.at:
            batch = batch.clone()
            batch["next", "reward"].fill_(float("nan"))
        return batch


def test_non_finite_loss_stops_naming_the_last_good_checkpoint_which_stays_intact(tmp_path, climbing_dataset):
    run_dir = tmp_path / "run"
    cfg = _cfg(climbing_dataset, run_dir, "plugins=[{name: test_nan_at_iteration, params: {at: 13}}]")
    with pytest.raises(TrainingError) as raised:
        fit(cfg)
    message = str(raised.value)
    assert "non-finite loss" in message and "at iteration 13" in message
    assert f"last good checkpoint is {run_dir / 'checkpoints' / 'last.ckpt'}" in message
    saved = _checkpoint(run_dir)
    assert saved["lightning_marl"]["iteration"] == 10  # the bad state never replaced it
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
