"""Shared test data: tiny datasets written once per session."""

import os

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker (and per subprocess it starts): two workers with torch's
    # default of one thread per core oversubscribe a 2-core machine many times over.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from lightning_marl.collect.matrix import matrix_game_transitions  # noqa: E402
from lightning_marl.data.dataset import write_dataset  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

@pytest.fixture
def one_thread():
    """Tiny networks: one intra-op thread is faster, and steady on a busy shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CLIMBING_MODES = [(0, 0), (1, 1), (2, 2)]
CLIMBING_PROBS = [0.25, 0.45, 0.30]  # the optimal joint action (0, 0) is a minority


@pytest.fixture(scope="session")
def climbing_dataset(tmp_path_factory):
    """Climbing game, only coordinated joint actions; the optimum (0, 0) in about 25 % of rows."""
    td, spec = matrix_game_transitions("climbing", CLIMBING_MODES, CLIMBING_PROBS, n=2000, seed=0)
    path = tmp_path_factory.mktemp("data") / "climbing"
    return write_dataset(
        path, td,
        {"spec": spec, "env": {"name": "matrix", "task": "climbing", "params": {}}, "quality": "coordinated",
         "reference_returns": {"random": -31 / 9, "expert": 11.0}},
    )


@pytest.fixture(scope="session")
def continuous_transitions():
    """A small random continuous dataset (2 agents, obs 3, action 2, per-agent state 2)."""
    from tensordict import TensorDict

    from lightning_marl.data import schema
    from lightning_marl.data.schema import TaskSpec

    g = torch.Generator().manual_seed(0)
    n, agents = 64, 2
    terminated = torch.rand(n, 1, generator=g) < 0.1
    truncated = torch.zeros(n, 1, dtype=torch.bool)
    td = TensorDict(
        {
            schema.OBS: torch.randn(n, agents, 3, generator=g),
            schema.NEXT_OBS: torch.randn(n, agents, 3, generator=g),
            schema.AGENT_STATE: torch.randn(n, agents, 2, generator=g),
            schema.NEXT_AGENT_STATE: torch.randn(n, agents, 2, generator=g),
            schema.STATE: torch.randn(n, 4, generator=g),
            schema.NEXT_STATE: torch.randn(n, 4, generator=g),
            schema.ACTION: torch.rand(n, agents, 2, generator=g) * 2 - 1,
            schema.REWARD: torch.randn(n, 1, generator=g),
            schema.TERMINATED: terminated, schema.TRUNCATED: truncated, schema.DONE: terminated | truncated,
            schema.EPISODE: torch.arange(n) // 8,
        },
        [n],
    )
    spec = TaskSpec(n_agents=agents, obs_dim=3, state_dim=4, discrete=False, action_dim=2, agent_state_dim=2,
                    action_low=[-2.0, -1.0], action_high=[2.0, 1.0])
    return td, spec


@pytest.fixture(scope="session")
def continuous_dataset(tmp_path_factory, continuous_transitions):
    td, spec = continuous_transitions
    return write_dataset(tmp_path_factory.mktemp("data") / "continuous", td, {"spec": spec, "quality": "random"})
