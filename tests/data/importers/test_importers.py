"""Every converter on a small file written here in its layout, compared with the episodes it holds."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from foreign_files import (
    flat,
    make_episodes,
    vault_arrays,
    write_omar,
    write_omiga_hdf5,
    write_pymarl,
    write_smac_episodes,
    write_vault,
)

from lightning_marl.cli import main
from lightning_marl.data import schema
from lightning_marl.data.dataset import load_dataset
from lightning_marl.data.importers.common import convert
from lightning_marl.data.importers.minari_format import export_minari
from lightning_marl.errors import ConfigError, DatasetError

CONT = make_episodes(seed=0)
DISC = make_episodes(seed=1, discrete=True)
STEPS = sum(ep["length"] for ep in CONT)  # 13
LAST = np.cumsum([ep["length"] for ep in CONT]) - 1  # row of each episode's last step


def expected_next_obs(episodes, repeat_truncated_last=False):
    rows = []
    for ep in episodes:
        nxt = ep["obs"][1:].copy()
        if repeat_truncated_last and not ep["terminated"]:
            nxt[-1] = ep["obs"][ep["length"] - 1]
        rows.append(nxt)
    return np.concatenate(rows)


def ends(episodes):
    term = np.concatenate([[ep["terminated"] and t == ep["length"] - 1 for t in range(ep["length"])] for ep in episodes])
    trunc = np.concatenate([[not ep["terminated"] and t == ep["length"] - 1 for t in range(ep["length"])] for ep in episodes])
    return term, trunc


def assert_matches(ds, episodes, next_obs, discrete=False, state=True):
    td = ds.transitions
    np.testing.assert_allclose(td[schema.OBS].numpy(), flat(episodes, "obs"), atol=1e-6)
    np.testing.assert_allclose(td[schema.NEXT_OBS].numpy(), next_obs, atol=1e-6)
    if state:
        np.testing.assert_allclose(td[schema.STATE].numpy(), flat(episodes, "state"), atol=1e-6)
    np.testing.assert_allclose(td[schema.REWARD][:, 0].numpy(), flat(episodes, "reward")[:, 0], atol=1e-6)
    if discrete:
        assert torch.equal(td[schema.ACTION], torch.as_tensor(flat(episodes, "action"), dtype=torch.int64))
        assert torch.equal(td[schema.ACTION_MASK], torch.as_tensor(flat(episodes, "mask")))
    else:
        np.testing.assert_allclose(td[schema.ACTION].numpy(), flat(episodes, "action"), atol=1e-6)
    term, trunc = ends(episodes)
    assert td[schema.TERMINATED][:, 0].tolist() == term.tolist()
    assert td[schema.TRUNCATED][:, 0].tolist() == trunc.tolist()
    assert td[schema.EPISODE].tolist() == np.repeat(np.arange(len(episodes)), [ep["length"] for ep in episodes]).tolist()
    returns = [float(ep["reward"][:, 0].sum()) for ep in episodes]
    assert ds.metadata["n_episodes"] == len(episodes)
    assert ds.metadata["episode_returns"]["mean"] == pytest.approx(np.mean(returns), abs=1e-5)


# ----------------------------------------------------------------------------------- OMIGA

def test_omiga_hdf5_default_splits_terminal_rows_and_time_limits(tmp_path):
    src = write_omiga_hdf5(tmp_path / "Ant-v2-2x4-expert.hdf5", CONT)
    ds = convert("omiga", src, tmp_path / "out", episode_length=4)
    assert_matches(ds, CONT, expected_next_obs(CONT, repeat_truncated_last=True))
    assert ds.metadata["env"]["task"] == "Ant-v2-2x4" and ds.metadata["quality"] == "expert"
    assert ds.spec.agent_state_dim == 4 and ds.spec.state_dim == 4  # per-agent copies of one state -> one state
    assert ds.metadata["reference_returns"]["random"] is None and ds.normalised_score(1.0) is None


def test_omiga_hdf5_next_row_compat_chains_time_limit_ends(tmp_path):
    src = write_omiga_hdf5(tmp_path / "Ant-v2-2x4-expert.hdf5", CONT)
    ds = convert("omiga", src, tmp_path / "out", next_row_compat=True)
    td = ds.transitions
    # OMIGA keeps rows with d = 0 except the file's last row (here a terminal row): every one of the 13 steps
    assert len(ds) == STEPS
    # episode 0 ends by the time limit: its last step chains into episode 1's first observation
    np.testing.assert_allclose(td[schema.NEXT_OBS][LAST[0]].numpy(), CONT[1]["obs"][0])
    assert not td[schema.DONE][LAST[0]].item()
    # episode 1 terminated: bootstrap mask 1 - d[t+1] = 0 on its last step
    assert td[schema.TERMINATED][LAST[1], 0].item()
    assert ds.metadata["n_episodes"] == 2 and ds.metadata["source"]["next_row_compat"] is True


def test_omiga_hdf5_without_episode_length_cannot_see_time_limits(tmp_path):
    src = write_omiga_hdf5(tmp_path / "Ant-v2-2x4-expert.hdf5", CONT)
    ds = convert("omiga", src, tmp_path / "out")
    assert ds.metadata["n_episodes"] == 2  # ep0+ep1 and ep2+ep3 chained: no d and no time limit to split them
    assert any("cannot be detected" in note for note in ds.metadata["notes"])


def test_omiga_hdf5_missing_key_and_bad_shape_name_the_key(tmp_path):
    src = write_omiga_hdf5(tmp_path / "x.hdf5", CONT, s=None)
    with pytest.raises(DatasetError, match=r"x.hdf5: missing key 's'"):
        convert("omiga", src, tmp_path / "out")
    src = write_omiga_hdf5(tmp_path / "y.hdf5", CONT, a=np.zeros((STEPS + 2, 3, 2), np.float32))
    with pytest.raises(DatasetError, match=r"y.hdf5: key 'a' has shape \[15, 3, 2\], expected \[15, 2, \*\]"):
        convert("omiga", src, tmp_path / "out")


def test_omiga_actions_outside_unit_box_need_bounds(tmp_path):
    scaled = [dict(ep, action=ep["action"] * 3.0) for ep in CONT]
    src = write_omiga_hdf5(tmp_path / "big.hdf5", scaled)
    with pytest.raises(DatasetError, match="--action-bounds"):
        convert("omiga", src, tmp_path / "out", episode_length=4)
    ds = convert("omiga", src, tmp_path / "out", episode_length=4, action_bounds=(-3.0, 3.0))
    np.testing.assert_allclose(ds.transitions[schema.ACTION].numpy(), flat(CONT, "action"), atol=1e-6)
    assert ds.spec.action_low == [-3.0, -3.0] and ds.spec.action_high == [3.0, 3.0]


def test_omiga_smac_episodes_load_safely_and_refuse_payloads(tmp_path):
    folder = write_smac_episodes(tmp_path / "3m-medium", DISC)
    ds = convert("omiga", folder, tmp_path / "out")
    next_obs = expected_next_obs(DISC, repeat_truncated_last=True)
    for j, ep in enumerate(DISC):  # the files hold no final observation: last steps repeat themselves
        next_obs[LAST[j]] = ep["obs"][ep["length"] - 1]
    assert_matches(ds, DISC, next_obs, discrete=True)
    assert ds.metadata["source"]["allow_pickle"] is False

    marker = tmp_path / "payload-ran"
    torch.save([[Payload(marker)]], folder / "zz_evil.pt")
    with pytest.raises(DatasetError, match="zz_evil.pt: cannot be read safely.*--allow-pickle"):
        convert("omiga", folder, tmp_path / "out2")
    assert not marker.exists()


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# ------------------------------------------------------------------------------------ OMAR

def test_omar_per_agent_arrays(tmp_path):
    src = write_omar(tmp_path / "simple_spread" / "expert" / "seed_0_data", CONT)
    ds = convert("omar", src, tmp_path / "out")
    assert_matches(ds, CONT, expected_next_obs(CONT), state=False)
    np.testing.assert_allclose(ds.transitions[schema.STATE].numpy(), flat(CONT, "obs").reshape(STEPS, -1))
    assert (ds.metadata["env"]["task"], ds.metadata["quality"]) == ("simple_spread", "expert")
    assert ds.transitions[schema.AGENT_REWARD].shape == (STEPS, 2, 1)


def test_omar_states_and_agent_subset(tmp_path):
    src = write_omar(tmp_path / "seed_1_data", CONT, with_states=True)
    ds = convert("omar", src, tmp_path / "out")
    np.testing.assert_allclose(ds.transitions[schema.STATE].numpy(), flat(CONT, "state"))
    one = convert("omar", src, tmp_path / "one", agents=[1])
    assert one.spec.n_agents == 1 and one.spec.agent_names == ["agent_1"]
    np.testing.assert_allclose(one.transitions[schema.OBS][:, 0].numpy(), flat(CONT, "obs")[:, 1])
    with pytest.raises(DatasetError, match=r"agents \[5\] have no arrays"):
        convert("omar", src, tmp_path / "bad", agents=[5])


# ---------------------------------------------------------------------------------- pymarl

def test_pymarl_episode_batch(tmp_path):
    src = write_pymarl(tmp_path / "3m_medium.h5", DISC)
    ds = convert("pymarl", src, tmp_path / "out")
    assert_matches(ds, DISC, expected_next_obs(DISC), discrete=True)
    nxt_mask = ds.transitions[schema.NEXT_ACTION_MASK]
    assert torch.equal(nxt_mask, torch.as_tensor(np.concatenate([ep["mask"][1:] for ep in DISC])))
    assert ds.metadata["quality"] == "medium" and ds.spec.n_actions == 3


def test_pymarl_unavailable_action_is_named(tmp_path):
    from foreign_files import pymarl_arrays

    arrays = pymarl_arrays(DISC)
    arrays["avail_actions"][0, 0, 0] = 0
    arrays["avail_actions"][0, 0, 0, (arrays["actions"][0, 0, 0, 0] + 1) % 3] = 1
    src = write_pymarl(tmp_path / "bad.h5", DISC, avail_actions=arrays["avail_actions"])
    with pytest.raises(DatasetError, match=r"bad.h5: the action in 'actions' at index \[0, 0\] is marked unavailable"):
        convert("pymarl", src, tmp_path / "out")


# ---------------------------------------------------------------------------------- OG-MARL

@pytest.fixture(scope="module")
def vaults(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaults")
    return {
        "discrete": write_vault(root, "smac_3m", "Good", vault_arrays(DISC)),
        "continuous": write_vault(root, "mamujoco_2halfcheetah", "Medium", vault_arrays(CONT, discrete=False)),
    }


def vault_next_obs(episodes):
    nxt = expected_next_obs(episodes)
    for j, ep in enumerate(episodes):
        nxt[LAST[j]] = ep["obs"][ep["length"] - 1]
    return nxt


def test_ogmarl_discrete_vault(vaults, tmp_path):
    ds = convert("ogmarl", vaults["discrete"], tmp_path / "out")
    assert_matches(ds, DISC, vault_next_obs(DISC), discrete=True)
    assert (ds.metadata["env"]["task"], ds.metadata["quality"]) == ("smac_3m", "Good")


def test_ogmarl_continuous_vault_from_its_name_directory(vaults, tmp_path):
    ds = convert("ogmarl", vaults["continuous"].parent, tmp_path / "out")  # one uid: found by itself
    assert_matches(ds, CONT, vault_next_obs(CONT))


def test_ogmarl_without_flashbax_names_the_extra(vaults, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "flashbax.vault", None)
    with pytest.raises(ConfigError, match=r'pip install "lightning_marl\[smax\]"'):
        convert("ogmarl", vaults["discrete"], tmp_path / "out")


# ----------------------------------------------------------------------------------- Minari

def test_minari_round_trip_discrete_and_continuous(tmp_path):
    for name, src_file, writer, fmt, opts in (
        ("disc", "3m_medium.h5", write_pymarl, "pymarl", {}),
        ("cont", "Ant-v2-2x4-expert.hdf5", write_omiga_hdf5, "omiga", {"episode_length": 4, "action_bounds": (-2, 2)}),
    ):
        episodes = DISC if name == "disc" else [dict(ep, action=ep["action"] * 2) for ep in CONT]
        ours = convert(fmt, writer(tmp_path / src_file, episodes), tmp_path / name, reference_random=-1.0,
                       reference_expert=5.0, **opts)
        target = export_minari(ours.path, tmp_path / "minari_root")
        assert target == tmp_path / "minari_root" / "lightning_marl" / f"{name}-v0"
        import minari

        raw = minari.MinariDataset(target / "data")
        assert raw.total_episodes == 4 and raw.total_steps == STEPS
        if name == "cont":  # exported in the environment's units
            first = next(raw.iterate_episodes())
            np.testing.assert_allclose(first.actions["agent_0"], episodes[0]["action"][:, 0], atol=1e-5)
        back = convert("minari", target, tmp_path / f"{name}_back")
        assert back.metadata["reference_returns"]["expert"] == 5.0  # carried in lightning_marl.json
        assert back.spec.to_dict() == ours.spec.to_dict()
        for key in ours.transitions.keys(include_nested=True, leaves_only=True):
            if key in (schema.AGENT_REWARD,):
                continue
            a, b = ours.transitions[key], back.transitions[key]
            assert torch.allclose(a.float(), b.float(), atol=1e-5), key


# ------------------------------------------------------------------------ references and CLI

def test_reference_returns_from_flags_table_or_null(tmp_path):
    src = write_omar(tmp_path / "simple_spread" / "expert" / "seed_0_data", CONT)
    flagged = convert("omar", src, tmp_path / "a", reference_random=-10.0, reference_expert=10.0)
    assert flagged.normalised_score(0.0) == pytest.approx(50.0)
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"entries": [
        {"format": "omar", "task": "simple_spread", "random": -4.0, "expert": 4.0, "source": "Test et al., Table 9"},
        {"format": "omar", "task": "simple_spread", "quality": "expert", "random": 0.0, "expert": 8.0, "source": "T2"},
    ]}))
    tabled = convert("omar", src, tmp_path / "b", reference_table=table)
    assert tabled.metadata["reference_returns"] == {"random": 0.0, "expert": 8.0, "source": "published value: T2"}
    null = convert("omar", src, tmp_path / "c")
    assert null.normalised_score(3.0) is None
    with pytest.raises(ConfigError, match="give both"):
        convert("omar", src, tmp_path / "d", reference_random=1.0)
    from lightning_marl.data.importers.common import load_reference_table

    assert load_reference_table() == []  # the shipped table: no value we could check against its publication


def test_unknown_option_and_format_are_refused(tmp_path):
    src = write_omar(tmp_path / "seed_0_data", CONT)
    with pytest.raises(ConfigError, match="takes no option 'allow_pickle'"):
        convert("omar", src, tmp_path / "out", allow_pickle=True)
    with pytest.raises(ConfigError, match="no importer named 'omgia'. Did you mean omiga"):
        convert("omgia", src, tmp_path / "out")


def test_cli_convert_info_and_export(tmp_path, capsys):
    src = write_pymarl(tmp_path / "3m_medium.h5", DISC)
    dst = tmp_path / "3m_medium"
    assert main(["dataset", "convert", "--from", "pymarl", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "transitions 13  episodes 4" in out and "reference returns: none" in out
    assert main(["dataset", "info", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "transitions    13  episodes 4" in out
    assert main(["dataset", "convert", "--from", "pymarl", str(src), str(dst)]) == 2  # exists: our error, no traceback
    assert "already exists" in capsys.readouterr().err
    assert main(["dataset", "export", "--to", "minari", str(dst), str(tmp_path / "mroot")]) == 0
    assert "lightning_marl/3m_medium-v0" in capsys.readouterr().out
    assert load_dataset(dst).metadata["generation"]["command"].startswith("lightning_marl dataset convert --from pymarl")


def test_null_references_give_no_normalised_score_anywhere(tmp_path, capsys):
    """An imported dataset without references trains and evaluates; every normalised score is null / n/a."""
    from lightning_marl.collect.matrix import matrix_game_transitions
    from lightning_marl.config import load_config
    from lightning_marl.data.dataset import write_dataset
    from lightning_marl.run import evaluate, fit

    td, spec = matrix_game_transitions("climbing", [(0, 0), (1, 1)], [0.5, 0.5], n=200, seed=0)
    ours = write_dataset(tmp_path / "climb", td, {"spec": spec, "env": {"name": "matrix", "task": "climbing", "params": {}}})
    target = export_minari(ours.path, tmp_path / "mroot")  # the same data, imported: no references anywhere
    imported = convert("minari", target, tmp_path / "imported")
    assert imported.metadata["reference_returns"]["expert"] is None
    cfg = load_config("bc/climbing", [f"data.path={imported.path}", "algorithm.steps=4", "eval.episodes=2",
                                      f"run_dir={tmp_path / 'run'}", "progress=false", "checkpoint_every=2"])
    summary = fit(cfg)
    assert summary["final"]["normalised_score"] is None and summary["best"]["normalised_score"] is None
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["final"]["normalised_score"] is None
    assert evaluate(tmp_path / "run")["normalised_score"] is None
    from lightning_marl.cli import print_summary

    print_summary(summary)
    assert "final normalised   n/a" in capsys.readouterr().out


def test_omiga_termination_at_the_time_limit_stays_terminated(tmp_path):
    episodes = make_episodes(seed=3, lengths=(4, 4), terminated=(True, False))
    ds = convert("omiga", write_omiga_hdf5(tmp_path / "t.hdf5", episodes), tmp_path / "out", episode_length=4)
    assert ds.transitions[schema.TERMINATED][:, 0].tolist() == [False] * 3 + [True] + [False] * 4
    assert ds.transitions[schema.TRUNCATED][:, 0].tolist() == [False] * 7 + [True]
    np.testing.assert_allclose(ds.transitions[schema.NEXT_OBS][3].numpy(), episodes[0]["obs"][4])


def test_omiga_smac_allow_pickle_is_an_explicit_opt_in(tmp_path):
    from foreign_files import Step

    folder = write_smac_episodes(tmp_path / "3m-medium", DISC, step_type=lambda fields: Step(*fields))
    with pytest.raises(DatasetError, match="--allow-pickle"):
        convert("omiga", folder, tmp_path / "safe")
    ds = convert("omiga", folder, tmp_path / "trusted", allow_pickle=True)
    assert len(ds) == STEPS and ds.metadata["source"]["allow_pickle"] is True
