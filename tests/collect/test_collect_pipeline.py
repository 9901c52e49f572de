"""The quality pipeline of `collect` on a tiny budget: PPO on VMAS navigation and on a matrix game."""

import json

import pytest
import torch

from lightning_marl.collect.config import load_collect_config
from lightning_marl.collect.pipeline import run_collect
from lightning_marl.collect.qualities import select_qualities
from lightning_marl.data import schema
from lightning_marl.data.dataset import episode_returns, load_dataset
from lightning_marl.errors import ConfigError, TrainingError

QUALITIES = {"random": 4, "medium": 4, "medium-replay": 5, "expert": 4, "medium-expert": 4}


def tiny_navigation(tmp_path, *extra):
    overrides = [
        "name=nav", "env.name=vmas", "env.task=navigation", "env.max_steps=10", "env.num_envs=4",
        "env.params={n_agents: 2}", "train.env_steps=400", "train.num_envs=4", "train.rollout_steps=20",
        "train.checkpoint_every=1", "train.eval_episodes=4", "train.hidden=[16, 16]", "reference.episodes=8",
        f"output_dir={tmp_path}/out", "chunk_episodes=3", "progress=false",
    ] + [f"qualities.{q}.episodes={n}" for q, n in QUALITIES.items()]
    return load_collect_config(None, overrides + list(extra))


@pytest.fixture(scope="module")
def navigation_run(tmp_path_factory, one_thread_module):
    tmp_path = tmp_path_factory.mktemp("collect")
    cfg = tiny_navigation(tmp_path)
    return cfg, run_collect(cfg, command="test command")


@pytest.fixture(scope="module")
def one_thread_module():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_quality_has_its_label_episodes_and_the_same_measured_references(navigation_run):
    cfg, result = navigation_run
    reference = result["reference"]
    assert reference["expert"] > reference["random"]
    for quality, episodes in QUALITIES.items():
        ds = load_dataset(result["datasets"][quality], verify="always")
        meta = ds.metadata
        assert meta["quality"] == quality and meta["id"] == f"nav-{quality}"
        assert meta["n_episodes"] == episodes and meta["n_transitions"] == episodes * 10  # no early ends in 10 steps
        assert torch.equal(torch.unique(ds.transitions[schema.EPISODE]), torch.arange(episodes))
        assert {k: meta["reference_returns"][k] for k in ("random", "expert")} == \
            {k: reference[k] for k in ("random", "expert")}
        assert meta["reference_returns"]["episodes"] == 8 and "rollouts" in meta["reference_returns"]["source"]
        assert meta["team_reward_rule"].startswith("mean of the per-agent rewards")
        assert schema.AGENT_REWARD in ds.transitions.keys(include_nested=True)
        assert meta["generation"]["command"] == "test command" and meta["generation"]["seed"] == 0
        assert meta["generation"]["versions"]["torch"] == torch.__version__ and "vmas" in meta["generation"]["versions"]
        assert sum(s["episodes"] for s in meta["behaviour"]["segments"]) == episodes
        returns = episode_returns(ds.transitions)
        assert abs(returns.mean().item() - meta["episode_returns"]["mean"]) < 1e-6


def test_expert_and_medium_follow_the_selection_rule_on_the_recorded_checkpoints(navigation_run):
    cfg, result = navigation_run
    ladder, pick, reference = result["ladder"], result["pick"], result["reference"]
    index = json.loads(open(f"{cfg.output_dir}/.work/nav/training/index.json").read())
    # 400 steps / (4 envs x 20 steps) = 5 iterations, a checkpoint at each and at iteration 0
    assert [e["iteration"] for e in index] == [0, 1, 2, 3, 4, 5]
    returns = [e["eval_return"] for e in index]
    assert [e["return"] for e in ladder] == returns
    assert pick["expert"] == max(range(6), key=lambda i: returns[i])
    scores = [100 * (r - reference["random"]) / (reference["expert"] - reference["random"]) for r in returns]
    inside = [i for i in range(pick["expert"] + 1) if 30 <= scores[i] <= 60]
    if inside:
        assert pick["medium"] == inside[-1] and pick["medium_in_range"]
    else:
        assert pick["medium"] == min(range(pick["expert"] + 1), key=lambda i: abs(scores[i] - 45))
    meta = {q: load_dataset(p, verify="never").metadata for q, p in result["datasets"].items()}
    expert_file = index[pick["expert"]]["file"]
    medium_file = index[pick["medium"]]["file"]
    assert [s["policy"]["file"] for s in meta["expert"]["behaviour"]["segments"]] == [expert_file]
    assert [s["policy"]["file"] for s in meta["medium"]["behaviour"]["segments"]] == [medium_file]
    assert meta["expert"]["behaviour"]["segments"][0]["policy"]["mode"] == "greedy"
    replay = meta["medium-replay"]["behaviour"]["segments"]
    assert [s["policy"]["file"] for s in replay] == [e["file"] for e in index[: pick["medium"] + 1]][: len(replay)]
    assert all(s["policy"]["mode"] == "sample" for s in replay)
    mixed = meta["medium-expert"]["behaviour"]["segments"]
    assert [(s["policy"]["file"], s["episodes"]) for s in mixed] == [(medium_file, 2), (expert_file, 2)]
    assert [s["policy"]["kind"] for s in meta["random"]["behaviour"]["segments"]] == ["random"]


def test_the_same_command_again_skips_finished_datasets_and_a_larger_budget_continues_training(navigation_run):
    cfg, result = navigation_run
    stamps = {q: (p / "metadata.json").stat().st_mtime_ns for q, p in result["datasets"].items()}
    run_collect(cfg)
    assert stamps == {q: (p / "metadata.json").stat().st_mtime_ns for q, p in result["datasets"].items()}
    with pytest.raises(ConfigError, match="already exists and was not made by this collection"):
        run_collect(tiny_navigation(cfg.output_dir.rsplit("/", 1)[0], "train.env_steps=480"))
    with pytest.raises(ConfigError, match="train.lr was 0.0003, now 0.001"):
        run_collect(tiny_navigation(cfg.output_dir.rsplit("/", 1)[0], "train.lr=0.001", "only=[random]",
                                    "name=other", f"work_dir={cfg.output_dir}/.work/nav"))


def test_training_resumes_from_its_last_checkpoint(tmp_path, one_thread):
    from lightning_marl.collect.config import TrainConfig
    from lightning_marl.collect.online_training import task_spec, train_behaviour
    from lightning_marl.envs import env_spec, make_env

    def make(n, seed):
        return make_env("matrix", "climbing", num_envs=n, seed=seed)

    spec = task_spec(env_spec(make(1, 0)))
    short = TrainConfig(env_steps=64, num_envs=8, rollout_steps=2, checkpoint_every=2, eval_episodes=4, hidden=[8])
    first = train_behaviour(make, spec, short, tmp_path, progress=False)
    assert [e["iteration"] for e in first] == [0, 2, 4]
    longer = TrainConfig(env_steps=128, num_envs=8, rollout_steps=2, checkpoint_every=2, eval_episodes=4, hidden=[8])
    second = train_behaviour(make, spec, longer, tmp_path, progress=False)
    assert second[:3] == first and [e["iteration"] for e in second] == [0, 2, 4, 6, 8]


def test_masac_training_resumes_every_component_from_its_last_checkpoint(tmp_path, one_thread):
    from lightning_marl.collect.config import TrainConfig
    from lightning_marl.collect.masac import train_masac
    from lightning_marl.collect.online_training import task_spec
    from lightning_marl.envs import env_spec, make_env

    def make(n, seed):
        return make_env("matrix", "agree", num_envs=n, seed=seed, n_agents=2, continuous=True)

    spec = task_spec(env_spec(make(1, 0)))

    def config(env_steps):
        return TrainConfig(algorithm="masac", env_steps=env_steps, num_envs=4, rollout_steps=2, warmup_steps=8,
                           updates=2, batch_size=8, checkpoint_every=2, eval_episodes=2, hidden=[8])

    first = train_masac(make, spec, config(32), tmp_path, progress=False)
    assert [e["iteration"] for e in first] == [0, 2, 4]
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert int(saved["iteration"]) == 4 and saved["optimiser"]["state"], "the optimiser's moments are saved"
    assert float(saved["log_alpha"]) != pytest.approx(-2.302585), "the temperature moved and is saved"
    assert train_masac(make, spec, config(32), tmp_path, progress=False) == first  # finished: nothing retrained
    second = train_masac(make, spec, config(64), tmp_path, progress=False)
    assert second[:3] == first and [e["iteration"] for e in second] == [0, 2, 4, 6, 8]
    resumed = torch.load(tmp_path / "state.pt", weights_only=True)
    assert int(resumed["iteration"]) == 8 and resumed["optimiser"]["state"][0]["step"] > saved["optimiser"]["state"][0]["step"]
    assert any(not torch.equal(resumed["critic"][k], saved["critic"][k]) for k in saved["critic"])


def test_select_qualities_works_with_negative_returns_and_says_when_no_policy_is_medium():
    ladder = [{"return": r} for r in (-100.0, -90.0, -40.0, -10.0, -20.0)]
    pick = select_qualities(ladder, {"random": -100.0, "expert": -10.0}, (30.0, 60.0))
    assert pick["expert"] == 3 and pick["medium"] == 2 and not pick["medium_in_range"]  # 66.7: none inside
    ladder = [{"return": r} for r in (-100.0, -70.0, -55.0, -10.0)]
    pick = select_qualities(ladder, {"random": -100.0, "expert": -10.0}, (30.0, 60.0))
    assert pick["medium"] == 2 and pick["medium_in_range"]  # the last inside before the expert: 50 (33.3 before)
    with pytest.raises(TrainingError, match="no better than uniform random"):
        select_qualities(ladder, {"random": 0.0, "expert": -1.0}, (30.0, 60.0))


def test_config_refuses_unknown_keys_and_qualities_it_cannot_make():
    with pytest.raises(ConfigError, match="Did you mean train.env_steps"):
        load_collect_config(None, ["train.env_step=10"])
    with pytest.raises(ConfigError, match="Did you mean qualities.medium.episodes"):
        load_collect_config(None, ["qualities.medium.episode=10"])
    with pytest.raises(ConfigError, match="a quality of your own is a mixture"):
        load_collect_config(None, ["qualities.great.episodes=10"])
    with pytest.raises(ConfigError, match="mix names 'great'"):
        load_collect_config(None, ["qualities.mine.mix={great: 1.0}"])
    with pytest.raises(ConfigError, match="train.algorithm must be one of"):
        load_collect_config(None, ["train.algorithm=dqn"])
    cfg = load_collect_config("collect/vmas_navigation", [])
    assert list(cfg.qualities) == ["random", "medium", "medium-replay", "expert"]


@pytest.mark.parametrize("algorithm", ["mappo", "ippo"])
def test_ppo_behaviour_learns_the_penalty_game_without_the_penalty(tmp_path, one_thread, algorithm):
    """Payoff [[10, 0, 0], [0, 2, 0], [0, 0, 10]]: the untrained greedy pair sits at 2; PPO finds 10."""
    from lightning_marl.collect.config import TrainConfig
    from lightning_marl.collect.online_training import task_spec, train_behaviour
    from lightning_marl.envs import env_spec, make_env

    def make(n, seed):
        return make_env("matrix", "penalty", num_envs=n, seed=seed, k=0.0)

    cfg = TrainConfig(algorithm=algorithm, env_steps=320, num_envs=32, rollout_steps=1, checkpoint_every=5,
                      eval_episodes=8, hidden=[16], lr=3e-3)
    index = train_behaviour(make, task_spec(env_spec(make(1, 0))), cfg, tmp_path, progress=False)
    assert index[0]["eval_return"] < 10.0 and index[-1]["eval_return"] == 10.0


@pytest.mark.slow
def test_navigation_pipeline_with_a_real_budget_orders_the_qualities(tmp_path, one_thread):
    """150k PPO steps on VMAS navigation (3 agents, 100 steps): about 3 minutes on an idle machine."""
    cfg = load_collect_config("collect/vmas_navigation", [
        "train.env_steps=150000", "train.checkpoint_every=2", f"output_dir={tmp_path}", "progress=false",
        "chunk_episodes=50", *[f"qualities.{q}.episodes=100" for q in ("random", "medium", "medium-replay", "expert")],
    ])
    result = run_collect(cfg, command="slow test")
    reference = result["reference"]
    assert reference["expert"] > 2.0 and reference["random"] < 0.0  # the scripted heuristic reaches about 3.0
    assert result["pick"]["medium_in_range"]
    means = {q: load_dataset(p, verify="never").metadata["episode_returns"]["mean"]
             for q, p in result["datasets"].items()}
    assert means["random"] < means["medium-replay"] < means["medium"] < means["expert"]
    score = 100 * (means["medium"] - reference["random"]) / (reference["expert"] - reference["random"])
    assert 20 <= score <= 70, score


def test_masac_behaviour_learns_continuous_agree(tmp_path, one_thread):
    """Reward 1 - min(mean (a - 1)^2, mean (a + 1)^2): random actions score about 0.1, agreeing ones 1."""
    from lightning_marl.collect.config import TrainConfig
    from lightning_marl.collect.masac import train_masac
    from lightning_marl.collect.online_training import task_spec
    from lightning_marl.envs import env_spec, make_env

    def make(n, seed):
        return make_env("matrix", "agree", num_envs=n, seed=seed, n_agents=2, continuous=True)

    cfg = TrainConfig(algorithm="masac", env_steps=960, num_envs=16, rollout_steps=5, warmup_steps=200, updates=20,
                      batch_size=64, checkpoint_every=4, eval_episodes=8, hidden=[32, 32], lr=1e-3)
    index = train_masac(make, task_spec(env_spec(make(1, 0))), cfg, tmp_path, progress=False)
    assert index[0]["eval_return"] < 0.5 and index[-1]["eval_return"] > 0.9
    with pytest.raises(ConfigError, match="masac needs continuous actions"):
        train_masac(lambda n, s: make_env("matrix", "climbing", num_envs=n), task_spec(env_spec(
            make_env("matrix", "climbing", num_envs=1))), cfg, tmp_path / "d", progress=False)
