"""An interrupted collection resumes from its finished chunks and writes the same datasets."""

import pytest
import torch

from lightning_marl.collect.config import load_collect_config
from lightning_marl.collect.pipeline import run_collect
from lightning_marl.data.dataset import load_dataset


class Interrupt(Exception):
    pass


def scripted_navigation(root, name="nav"):
    return load_collect_config(None, [
        f"name={name}", "env.task=navigation", "env.max_steps=8", "env.num_envs=2", "env.params={n_agents: 2}",
        "behaviour=navigation_heuristic", "train.eval_episodes=2", "reference.episodes=4",
        "qualities.random.episodes=3", "qualities.medium.episodes=5", "qualities.expert.episodes=4",
        "qualities.medium-replay.episodes=3", "chunk_episodes=2", f"output_dir={root}", "progress=false",
    ])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = scripted_navigation(tmp_path_factory.mktemp("whole"))
    yield run_collect(cfg, command="c")
    torch.set_num_threads(threads)


def test_resume_after_an_interrupt_collects_only_the_missing_chunks_and_matches(tmp_path, uninterrupted):
    cfg = scripted_navigation(tmp_path)
    new_chunks = []

    def interrupt_after_four(quality, number):
        new_chunks.append((quality, number))
        if len(new_chunks) == 4:  # random: chunks 0, 1; medium: chunks 0, 1 (of 3)
            raise Interrupt

    with pytest.raises(Interrupt):
        run_collect(cfg, command="c", on_chunk=interrupt_after_four)
    assert new_chunks == [("random", 0), ("random", 1), ("medium", 0), ("medium", 1)]
    assert (tmp_path / "nav-random" / "metadata.json").exists()
    # No half-written medium dataset: neither the directory nor a temporary one that loads.
    assert not (tmp_path / "nav-medium").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".nav")] == []
    assert len(list((tmp_path / ".work" / "nav" / "chunks" / "medium").glob("*.pt"))) == 2

    resumed = []
    result = run_collect(cfg, command="c", on_chunk=lambda q, n: resumed.append((q, n)))
    # medium chunk 2 is the only medium chunk left; then medium-replay and expert from scratch
    assert resumed[0] == ("medium", 2) and ("medium", 0) not in resumed and ("random", 0) not in resumed
    assert sum(q == "medium" for q, _ in resumed) == 1
    for quality, path in result["datasets"].items():
        ours, theirs = load_dataset(path, verify="always"), load_dataset(uninterrupted["datasets"][quality])
        assert ours.metadata["n_episodes"] == cfg.qualities[quality].episodes
        assert ours.checksum == theirs.checksum, quality
    assert not (tmp_path / ".work" / "nav" / "chunks" / "medium").exists()  # chunks go once the dataset is written


def test_scripted_ladder_qualities_are_ordered_by_return(uninterrupted):
    ladder, pick, reference = uninterrupted["ladder"], uninterrupted["pick"], uninterrupted["reference"]
    assert ladder[0]["policy"]["random_prob"] == 1.0 and ladder[-1]["policy"]["random_prob"] == 0.0
    assert pick["expert"] == max(range(len(ladder)), key=lambda i: ladder[i]["return"])
    assert reference["expert"] > reference["random"]
    meta = load_dataset(uninterrupted["datasets"]["medium"], verify="never").metadata
    assert meta["behaviour"]["medium"]["label"] == ladder[pick["medium"]]["label"]
