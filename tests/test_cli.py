"""The command line: fit, evaluate, plugins, dataset; errors without tracebacks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_marl.cli import main

ROOT = Path(__file__).parents[1]


def _python_m(*args, env_extra=None, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "lightning_marl", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def test_fit_then_evaluate_through_python_m(tmp_path, climbing_dataset):
    run_dir = tmp_path / "run"
    fit = _python_m(
        "fit", f"data.path={climbing_dataset.path}", "algorithm.steps=40", "algorithm.alpha=1.0",
        "algorithm.hidden=[16,16]", "env={name: matrix, task: climbing, num_envs: 4}",
        "eval.episodes=8", f"run_dir={run_dir}", "log_every=10",
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    out = fit.stdout
    for text in ("lightning_marl fit: omiga on climbing", "iterations         40", "final return",
                 "final normalised", "grad-steps/s", str(run_dir)):
        assert text in out, (text, out)
    evaluation = _python_m("evaluate", str(run_dir / "checkpoints" / "last.ckpt"), "eval.episodes=5")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "over 5 episodes" in evaluation.stdout and "normalised" in evaluation.stdout


def test_config_errors_are_one_line_without_traceback(capsys):
    assert main(["fit", "algorithm.alpah=1.0"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'algorithm.alpah'" in err and "Did you mean algorithm.alpha" in err
    assert "Traceback" not in err
    assert main(["fit", "trainer.max_steps=10"]) == 2
    assert "use algorithm.steps" in capsys.readouterr().err
    with pytest.raises(Exception):
        main(["--debug", "fit", "algorithm.alpah=1.0"])


def test_print_config_shows_the_resolved_config(capsys):
    assert main(["fit", "--print-config", "algorithm.alpha=2.5", "trainer.devices=2"]) == 0
    out = capsys.readouterr().out
    assert "name: omiga" in out and "alpha: 2.5" in out and "devices: 2" in out and "recipe: vmas_navigation" in out


def test_dataset_info_and_verify(capsys, tmp_path, continuous_transitions):
    from lightning_marl.data.dataset import write_dataset

    td, spec = continuous_transitions
    path = tmp_path / "d"
    write_dataset(path, td, {"spec": spec, "quality": "random"})
    assert main(["dataset", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "transitions    64  episodes 8" in out and "random" in out
    mean = td["agents", "action"][:, 0].mean(0).tolist()
    assert f"actions agent_0  mean {[round(v, 3) for v in mean]}" in out
    assert main(["dataset", "verify", str(path)]) == 0
    assert "checksums match" in capsys.readouterr().out
    file = path / "arrays" / "state.bin"
    data = bytearray(file.read_bytes())
    data[0] ^= 1
    file.write_bytes(bytes(data))
    assert main(["dataset", "verify", str(path)]) == 2
    assert "checksum mismatch in 'state'" in capsys.readouterr().err


def test_dataset_info_counts_discrete_joint_actions(capsys, climbing_dataset):
    assert main(["dataset", "info", str(climbing_dataset.path)]) == 0
    out = capsys.readouterr().out
    assert "joint actions  3 distinct; most frequent: (1, 1)" in out


def test_plugins_lists_builtin_and_entry_point_plugins(tmp_path):
    # A separately installed package, as pip would lay it out: code plus a dist-info with entry points.
    site = tmp_path / "site"
    dist = site / "lightning_marl_toy_plugin-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lightning-marl-toy-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[lightning_marl.plugins]\nreward_scale = lightning_marl_toy_plugin\nbroken = no_such_module_here\n"
    )
    pythonpath = os.pathsep.join([str(ROOT), str(site), str(ROOT / "examples" / "toy_plugin")])
    listing = _python_m("plugins", env_extra={"PYTHONPATH": pythonpath})
    assert listing.returncode == 0, listing.stderr[-2000:]
    out = listing.stdout
    assert "algorithms (" in out and "omiga" in out and "bc" in out
    assert "envs (" in out and "matrix" in out and "vmas" in out
    line = next(row for row in out.splitlines() if "reward_scale" in row)
    assert "lightning_marl_toy_plugin" in line and "hooks: critic_target" in line
    assert "Multiplies the critic's TD target" in line
    assert "broken" in listing.stderr and "no_such_module_here" in listing.stderr


def test_sigterm_saves_a_checkpoint_and_the_next_fit_resumes(tmp_path, climbing_dataset):
    import signal
    import time

    import torch

    run_dir = tmp_path / "run"
    common = [f"data.path={climbing_dataset.path}", "algorithm.hidden=[16,16]", "algorithm.batch_size=16",
              "checkpoint_every=50", "log_every=10", "progress=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "lightning_marl", "fit", *common, "algorithm.steps=1000000",
                                f"run_dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), "no checkpoint appeared"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    stopped = torch.load(checkpoint, weights_only=True)["lightning_marl"]["iteration"]
    assert 50 <= stopped < 1_000_000
    assert f"interrupted at iteration {stopped}" in out and f"resume={run_dir}" in out

    resumed = _python_m("fit", f"resume={run_dir}", f"algorithm.steps={stopped + 20}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(checkpoint, weights_only=True)["lightning_marl"]["iteration"] == stopped + 20
