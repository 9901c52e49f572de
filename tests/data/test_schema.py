import pytest
import torch

from lightning_marl.data import schema
from lightning_marl.data.schema import TaskSpec, validate_transitions
from lightning_marl.errors import DatasetError


def test_valid_transitions_pass(continuous_transitions):
    td, spec = continuous_transitions
    validate_transitions(td, spec)


@pytest.mark.parametrize("key", [schema.OBS, schema.NEXT_STATE, schema.REWARD, schema.TERMINATED, schema.EPISODE])
def test_missing_key_is_named(continuous_transitions, key):
    td, spec = continuous_transitions
    broken = td.clone()
    broken.del_(key)
    with pytest.raises(DatasetError, match=schema.key_name(key).replace(".", r"\.")):
        validate_transitions(broken, spec)


def test_wrong_shape_names_key_found_and_expected(continuous_transitions):
    td, spec = continuous_transitions
    broken = td.clone()
    broken.set(schema.OBS, torch.zeros(64, 2, 4))
    with pytest.raises(DatasetError) as info:
        validate_transitions(broken, spec)
    message = str(info.value)
    assert "agents.observation" in message and "[64, 2, 4]" in message and "[64, 2, 3]" in message


def test_wrong_dtype_and_bad_values(continuous_transitions):
    td, spec = continuous_transitions
    broken = td.clone()
    broken.set(schema.TERMINATED, torch.zeros(64, 1))
    with pytest.raises(DatasetError, match="dtype"):
        validate_transitions(broken, spec)
    broken = td.clone()
    broken.get(schema.REWARD)[3] = float("nan")
    with pytest.raises(DatasetError, match="NaN"):
        validate_transitions(broken, spec)
    broken = td.clone()
    broken.set(schema.ACTION, td.get(schema.ACTION) * 3)
    with pytest.raises(DatasetError, match=r"\[-1, 1\]"):
        validate_transitions(broken, spec)
    broken = td.clone()
    broken.set(schema.DONE, ~td.get(schema.DONE))
    with pytest.raises(DatasetError, match="done"):
        validate_transitions(broken, spec)


def test_discrete_actions_must_be_available():
    from lightning_marl.collect.matrix import matrix_game_transitions

    td, spec = matrix_game_transitions("climbing", [(0, 0)], [1.0], n=4)
    validate_transitions(td, spec)
    td.get(schema.ACTION_MASK)[1, 0, 0] = False
    with pytest.raises(DatasetError, match="unavailable"):
        validate_transitions(td, spec)


def test_task_spec_round_trip_and_errors():
    spec = TaskSpec(n_agents=3, obs_dim=5, state_dim=15, discrete=True, n_actions=4)
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    assert spec.agent_names == ["agent_0", "agent_1", "agent_2"]
    with pytest.raises(DatasetError, match="n_actions"):
        TaskSpec(n_agents=3, obs_dim=5, state_dim=15, discrete=True)
    with pytest.raises(DatasetError, match="unknown task spec fields"):
        TaskSpec.from_dict({**spec.to_dict(), "colour": "red"})
