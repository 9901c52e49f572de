"""Every script in examples/ runs on a tiny budget: its ``main(argv)`` is called in this process
(in a temporary working directory, with its own data directory) and its result checked.

Adding an example is one line in EXAMPLES: the script, tiny-budget arguments, and a check of what
its ``main`` returns. A script in examples/ without a line fails ``test_every_example_is_listed``.
"""

import runpy
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"

EXAMPLES = [
    ("fit_and_evaluate.py", ["--config", "bc/climbing", "--steps", "60", "--episodes", "4"],
     lambda r: r["fit"]["iteration"] == 60 and r["evaluate"]["return_mean"] == r["fit"]["final"]["return_mean"]
     and r["actions"].shape == (2,)),
    ("custom_plugin.py", ["--steps", "30", "--std", "0.5"],
     lambda r: r["with"]["batches"] == 30 and r["without"]["batches"] == 0),
    ("benchmark_suite.py", ["--seeds", "2", "--steps", "20"],
     lambda r: [row["status"] for row in r["rows"]] == ["finished"] * 4 and "| climbing_coordinated |" in r["markdown"]),
]


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES_DIR.glob("*.py")) == sorted(name for name, _, _ in EXAMPLES)


@pytest.fixture(scope="session")
def examples_data(tmp_path_factory):
    return tmp_path_factory.mktemp("examples-data")


@pytest.mark.parametrize("script, argv, check", EXAMPLES, ids=[name for name, _, _ in EXAMPLES])
def test_example(script, argv, check, tmp_path, monkeypatch, examples_data):
    from lightning_marl import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_MARL_DATA", str(examples_data))
    registry.discover()
    saved = {kind: dict(entries) for kind, entries in registry._REGISTRY.items()}
    try:
        namespace = runpy.run_path(str(EXAMPLES_DIR / script), run_name=f"example_{Path(script).stem}")
        result = namespace["main"](argv)
    finally:
        for kind, entries in saved.items():
            registry._REGISTRY[kind].clear()
            registry._REGISTRY[kind].update(entries)
    assert check(result), f"{script} {' '.join(argv)} returned {result}"
