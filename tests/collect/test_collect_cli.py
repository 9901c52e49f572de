"""`python -m lightning_marl collect` on a discrete matrix game, and the dataset card's histogram."""

import sys

import pytest
import torch

from lightning_marl.cli import main
from lightning_marl.data import schema
from lightning_marl.data.dataset import load_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def climbing_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cli")
    argv = ["collect", "name=climb", "env.name=matrix", "env.task=climbing", "env.num_envs=16",
            "train.env_steps=512", "train.num_envs=16", "train.rollout_steps=4", "train.checkpoint_every=2",
            "train.eval_episodes=16", "train.hidden=[16]", "train.entropy_coef=0.01", "reference.episodes=64",
            "qualities.random.episodes=50", "qualities.expert.episodes=40", "qualities.mixed.episodes=30",
            "qualities.mixed.mix={random: 1, expert: 2}", f"output_dir={out}", "progress=false"]
    code = main(argv)
    torch.set_num_threads(threads)
    return code, out


def test_collect_command_writes_discrete_datasets_with_masks_and_references(climbing_run, capsys):
    code, out = climbing_run
    assert code == 0
    random_ds = load_dataset(out / "climb-random", verify="always")
    expert_ds = load_dataset(out / "climb-expert", verify="always")
    mixed = load_dataset(out / "climb-mixed", verify="always")
    assert (random_ds.metadata["n_episodes"], expert_ds.metadata["n_episodes"], mixed.metadata["n_episodes"]) == (50, 40, 30)
    assert schema.ACTION_MASK in expert_ds.transitions.keys(include_nested=True)
    reference = expert_ds.metadata["reference_returns"]
    assert abs(reference["random"] - (-31 / 9)) < 2.5  # uniform random over the 9 payoffs, 64 episodes
    assert reference["expert"] in (5.0, 6.0, 7.0, 11.0, 0.0)  # a greedy joint action of the game: one payoff
    # The greedy expert plays one joint action: its episodes all return the expert reference.
    assert expert_ds.metadata["episode_returns"]["std"] == 0.0
    assert expert_ds.metadata["episode_returns"]["mean"] == reference["expert"]
    assert [s["episodes"] for s in mixed.metadata["behaviour"]["segments"]] == [10, 20]
    assert random_ds.metadata["team_reward_rule"].startswith("the environment's shared")
    assert random_ds.metadata["generation"]["command"].startswith("python -m lightning_marl collect")


def test_dataset_info_writes_a_returns_histogram(climbing_run, tmp_path, capsys):
    _, out = climbing_run
    assert main(["dataset", "info", str(out / "climb-mixed")]) == 0
    assert "histogram" in capsys.readouterr().out
    assert (out / "climb-mixed" / "returns.png").read_bytes()[:8] == PNG_SIGNATURE
    target = tmp_path / "plots" / "mixed.png"
    assert main(["dataset", "info", str(out / "climb-mixed"), "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == PNG_SIGNATURE and target.stat().st_size > 5000


def test_dataset_info_without_matplotlib_names_the_extra(climbing_run, monkeypatch, capsys):
    _, out = climbing_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["dataset", "info", str(out / "climb-random"), "--plot", str(out / "x.png")]) == 2
    assert "lightning_marl[plot]" in capsys.readouterr().err
    assert main(["dataset", "info", str(out / "climb-random")]) == 0  # the card still prints
    captured = capsys.readouterr()
    assert "transitions" in captured.out and "lightning_marl[plot]" in captured.err


def test_collect_print_config_and_unknown_keys(capsys):
    assert main(["collect", "--config", "collect/vmas_navigation", "--print-config", "train.env_steps=7"]) == 0
    assert "env_steps: 7" in capsys.readouterr().out
    assert main(["collect", "trian.env_steps=7"]) == 2
    assert "Did you mean train" in capsys.readouterr().err
