"""Recurrent agents over [B, T] episode slices: the GRU network, slice sampling, masks, every
recurrent method through the harness path, hidden state in evaluation, and a memory task that
feed-forward agents cannot solve."""

import copy

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from lightning_marl import registry
from lightning_marl.data import schema
from lightning_marl.data.datamodule import EpisodeSlices, OfflineDataModule, RowGather
from lightning_marl.data.dataset import Dataset
from lightning_marl.data.schema import TaskSpec
from lightning_marl.envs import rollout_returns
from lightning_marl.errors import ConfigError
from lightning_marl.nets.recurrent import GRUAgent
from lightning_marl.policy import Policy, load_policy, save_policy

METHODS = ["bc", "qmix_cql", "icq", "cfcql", "omiga"]
N_AGENTS, OBS_DIM, STEPS = 2, 4, 3  # memory task: 3 steps per episode
SMALL = {"hidden": [16, 16], "gru_hidden": 16, "slice_len": 4}
MIXER = {"qmix_cql": {"mixer_embed": 8}, "icq": {"mixer_embed": 8}, "cfcql": {"mixer_embed": 8},
         "omiga": {"mixer_hidden": 8, "alpha": 1.0}, "bc": {}}


# ---- the memory task: a cue at step 0 decides the rewarded action at step 2 ------------------
def memory_observation(cue: torch.Tensor, t: int) -> torch.Tensor:
    """[..., N, 4]: one-hot step (t < 3; zeros for the terminal observation), the cue ±1 at t = 0 only."""
    obs = torch.zeros(*cue.shape, OBS_DIM)
    if t < STEPS:
        obs[..., t] = 1.0
    if t == 0:
        obs[..., 3] = 2.0 * cue - 1.0
    return obs


def memory_transitions(n_episodes: int, seed: int = 0, truncate_last: bool = False):
    """Expert data: random actions at steps 0 and 1, the cue at step 2 (reward = fraction of agents right)."""
    g = torch.Generator().manual_seed(seed)
    cue = torch.randint(2, (n_episodes, N_AGENTS), generator=g)
    obs = torch.stack([memory_observation(cue, t) for t in range(STEPS + 1)], 1)  # [E, 4, N, O]
    action = torch.randint(2, (n_episodes, STEPS, N_AGENTS), generator=g)
    action[:, -1] = cue
    reward = torch.zeros(n_episodes, STEPS, 1)
    reward[:, -1] = 1.0
    terminated = torch.zeros(n_episodes, STEPS, 1, dtype=torch.bool)
    terminated[:, -1] = True
    truncated = torch.zeros_like(terminated)
    if truncate_last:  # the last episode stops at step 1 by a time limit
        terminated[-1, -1], truncated[-1, 1] = False, True
    mask = torch.ones(n_episodes, STEPS, N_AGENTS, 2, dtype=torch.bool)
    flat = lambda x: x.reshape(n_episodes * STEPS, *x.shape[2:])  # noqa: E731
    td = TensorDict({
        schema.OBS: flat(obs[:, :-1]), schema.NEXT_OBS: flat(obs[:, 1:]),
        schema.STATE: flat(obs[:, :-1].flatten(-2)), schema.NEXT_STATE: flat(obs[:, 1:].flatten(-2)),
        schema.ACTION: flat(action), schema.ACTION_MASK: flat(mask), schema.NEXT_ACTION_MASK: flat(mask.clone()),
        schema.REWARD: flat(reward), schema.TERMINATED: flat(terminated), schema.TRUNCATED: flat(truncated),
        schema.DONE: flat(terminated | truncated),
        schema.EPISODE: torch.arange(n_episodes).repeat_interleave(STEPS),
    }, [n_episodes * STEPS])
    if truncate_last:
        td = td[:-1]  # the rows after the truncation are not in the data
    spec = TaskSpec(n_agents=N_AGENTS, obs_dim=OBS_DIM, state_dim=N_AGENTS * OBS_DIM, discrete=True, n_actions=2)
    return td, spec


class MemoryEnv(EnvBase):
    """The memory task as a batched TorchRL env in the batch contract (all envs step in lockstep)."""

    def __init__(self, num_envs: int = 16):
        super().__init__(batch_size=torch.Size([num_envs]))
        e, n = num_envs, N_AGENTS
        self.observation_spec = Composite(
            agents=Composite(observation=Unbounded((e, n, OBS_DIM)),
                             action_mask=Categorical(2, (e, n, 2), dtype=torch.bool), shape=(e, n)),
            state=Unbounded((e, n * OBS_DIM)), shape=(e,))
        self.action_spec = Composite(agents=Composite(action=Categorical(2, (e, n), dtype=torch.int64), shape=(e, n)),
                                     shape=(e,))
        self.reward_spec = Composite(reward=Unbounded((e, 1)), shape=(e,))
        flag = Categorical(2, (e, 1), dtype=torch.bool)
        self.done_spec = Composite(done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(e,))
        self.rng = torch.Generator().manual_seed(0)
        self.t, self.cue = 0, torch.zeros(e, n, dtype=torch.int64)

    def _observe(self) -> TensorDict:
        obs = memory_observation(self.cue, self.t)
        e = self.batch_size[0]
        agents = TensorDict({"observation": obs, "action_mask": torch.ones(e, N_AGENTS, 2, dtype=torch.bool)}, (e, N_AGENTS))
        return TensorDict({"agents": agents, "state": obs.flatten(-2)}, self.batch_size)

    def _reset(self, tensordict=None, **kwargs):
        self.t, self.cue = 0, torch.randint(2, self.cue.shape, generator=self.rng)
        out = self._observe()
        for key in ("done", "terminated", "truncated"):
            out[key] = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return out

    def _step(self, tensordict):
        right = (tensordict["agents", "action"] == self.cue).float().mean(-1, keepdim=True)
        reward = right if self.t == STEPS - 1 else torch.zeros_like(right)
        self.t += 1
        out = self._observe()
        done = torch.full((*self.batch_size, 1), self.t == STEPS, dtype=torch.bool)
        out["reward"], out["done"], out["terminated"], out["truncated"] = reward, done, done.clone(), ~done & done
        return out

    def _set_seed(self, seed):
        self.rng.manual_seed(seed or 0)


@pytest.fixture(scope="module")
def memory_data():
    return memory_transitions(400, seed=0)


def make_module(name, spec, **overrides):
    torch.manual_seed(0)
    return registry.get("algorithm", name).from_spec(spec, recurrent=True, **{**SMALL, **MIXER[name], **overrides})


def sampler(td, module, batch_size=16, seed=0):
    dataset = Dataset(path=None, transitions=td, metadata={})
    dm = OfflineDataModule(dataset, batch_size, seed=seed, slice_len=module.slice_len, prepare=module.prepare_transitions)
    dm.setup()
    return dm


# ---- the network ------------------------------------------------------------------------
def test_gru_next_outputs_continue_the_unroll_and_agents_are_independent():
    torch.manual_seed(0)
    net = GRUAgent(OBS_DIM, 3, N_AGENTS, hidden=8)
    sequence = torch.randn(5, 6, N_AGENTS, OBS_DIM)
    next_sequence = torch.cat([sequence[:, 1:], torch.randn(5, 1, N_AGENTS, OBS_DIM)], 1)
    out, next_out = net(sequence, next_sequence)
    # o'_t = o_{t+1} inside an episode: the bootstrap output equals the next step's output
    torch.testing.assert_close(next_out[:, :-1], out[:, 1:])
    # agents share weights but not memory: changing agent 1's inputs leaves agent 0's outputs alone
    other = sequence.clone()
    other[:, :, 1] = torch.randn(5, 6, OBS_DIM)
    torch.testing.assert_close(net(other)[0][:, :, 0], out[:, :, 0])
    assert not torch.allclose(net(other)[0][:, :, 1], out[:, :, 1])
    # an agent's id matters: the same observation for both agents gives different outputs
    same = sequence[:, :, :1].expand(-1, -1, N_AGENTS, -1)
    assert not torch.allclose(net(same)[0][:, :, 0], net(same)[0][:, :, 1])


# ---- slice sampling -------------------------------------------------------------------------
def variable_episodes():
    """Episodes of lengths 1..7 (ids repeat after a done row, to test cutting at dones), rows tagged by index."""
    lengths = [3, 1, 7, 2, 5, 4, 6, 1]
    episode = torch.cat([torch.full((n,), i % 3) for i, n in enumerate(lengths)])  # ids reused: 0, 1, 2, 0, ...
    done = torch.zeros(len(episode), 1, dtype=torch.bool)
    done[torch.tensor(lengths).cumsum(0) - 1] = True
    done[-1] = False  # the last episode was cut without a done flag
    row = torch.arange(len(episode))
    td = TensorDict({"row": row, schema.EPISODE: episode, schema.DONE: done}, [len(row)])
    starts = torch.tensor([0] + lengths).cumsum(0)[:-1]
    return td, lengths, starts


def test_slices_are_consecutive_steps_of_one_episode_with_the_right_mask():
    td, lengths, starts = variable_episodes()
    T = 4
    slices = EpisodeSlices(td, T)
    assert slices.n_episodes == len(lengths)
    batch = slices.sample(RowGather(td), 4000, torch.Generator().manual_seed(0))
    assert batch.batch_size == (4000, T)
    row, mask, is_init = batch["row"], batch[schema.MASK], batch[schema.IS_INIT]
    episode_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    first, end = starts[episode_of[row[:, 0]]], (starts + torch.tensor(lengths))[episode_of[row[:, 0]]]
    real = row[:, :1] + torch.arange(T)  # what the rows would be without padding
    window = mask.sum(-1, keepdim=True)  # a prefix of True: the window's steps
    assert torch.equal(mask, torch.arange(T) < window) and bool(mask[:, 0].all())
    assert bool((mask | (real >= end.unsqueeze(-1)) | (row[:, :1] == first.unsqueeze(-1))).all())  # else: past the end
    # consecutive steps of one episode; past its end, padding repeats the last step
    assert torch.equal(row, torch.minimum(real, end.unsqueeze(-1) - 1))
    assert torch.equal(episode_of[row], episode_of[row[:, :1]].expand(-1, T))  # never crossing episodes
    assert torch.equal(is_init, mask & (row == first.unsqueeze(-1)))
    assert 0.2 < is_init[:, 0].float().mean() < 0.8  # slices start at episode starts often, not always
    # every step lies in exactly T of the equally likely windows (as uniform as the feed-forward sampler)
    every_row, every_mask, _ = slices.window_rows(torch.arange(slices.n_windows))
    assert slices.n_windows == sum(lengths) + len(lengths) * (T - 1)
    assert torch.equal(torch.bincount(every_row[every_mask], minlength=len(td)), torch.full((len(td),), T))


def test_slice_batches_are_deterministic_per_seed_rank_and_iteration(memory_data):
    td, spec = memory_data
    module = make_module("bc", spec)
    dm, other_seed = sampler(td, module, seed=3), sampler(td, module, seed=4)
    first = dm.sample_for_rank(0, 7)
    assert first.batch_size == (16, 4) and first[schema.OBS].shape == (16, 4, N_AGENTS, OBS_DIM)
    assert torch.equal(first[schema.OBS], dm.sample_for_rank(0, 7)[schema.OBS])
    for batch in (dm.sample_for_rank(1, 7), dm.sample_for_rank(0, 8), other_seed.sample_for_rank(0, 7)):
        assert not torch.equal(first[schema.OBS], batch[schema.OBS])


def test_datamodule_in_a_trainer_takes_slice_len_and_preparation_from_the_module(memory_data):
    td, spec = memory_data
    module = make_module("icq", spec)

    class FakeTrainer:
        lightning_module, global_rank = module, 0

    dm = OfflineDataModule(Dataset(path=None, transitions=td, metadata={}), 8)
    dm.trainer = FakeTrainer()
    batch = dm.sample(0)
    assert batch.batch_size == (8, 4)
    # ICQ's next joint action a'_D, added at set-up: the next step's action inside an episode
    inside = batch[schema.MASK][:, :-1] & batch[schema.MASK][:, 1:]
    assert torch.equal(batch[schema.NEXT_ACTION][:, :-1][inside], batch[schema.ACTION][:, 1:][inside])


def test_burn_in_leaves_warm_up_steps_out_unless_the_slice_starts_an_episode(memory_data):
    td, spec = memory_data
    module = make_module("bc", spec, burn_in=2)
    batch = sampler(td, module, batch_size=64).sample(0)
    loss_mask, mask, init = module.loss_mask(batch), batch[schema.MASK], batch[schema.IS_INIT][:, :1]
    assert torch.equal(loss_mask[:, 2:], mask[:, 2:])
    assert torch.equal(loss_mask[:, :2], mask[:, :2] & init)
    assert bool(init.any()) and bool((~init).any())
    with pytest.raises(ConfigError, match="burn_in"):
        make_module("bc", spec, burn_in=4)


def test_recurrent_agents_are_refused_for_continuous_actions():
    spec = TaskSpec(n_agents=2, obs_dim=3, state_dim=6, discrete=False, action_dim=2)
    with pytest.raises(ConfigError, match="discrete"):
        registry.get("algorithm", "omiga").from_spec(spec, recurrent=True, hidden=[8, 8])


# ---- losses: padding contributes nothing --------------------------------------------------
def perturb_padding(batch):
    """A copy of ``batch`` with every input at padded steps replaced by noise (other actions too)."""
    out = batch.clone()
    pad = ~batch[schema.MASK]
    g = torch.Generator().manual_seed(1)
    for key in out.keys(include_nested=True, leaves_only=True):
        value = out.get(key)
        if key in (schema.MASK, schema.IS_INIT) or value.dtype == torch.bool:
            continue
        if value.dtype.is_floating_point:
            noise = 5 * torch.randn(value.shape, generator=g)
        else:
            noise = torch.randint(2, value.shape, generator=g)  # actions (and episode ids) in range
        index = pad.reshape(*pad.shape, *([1] * (value.ndim - 2))).expand_as(value)
        out.set(key, torch.where(index, noise, value))
    return out


def losses_and_grads(module, batch):
    losses = module.losses(batch)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(losses.values()), params, allow_unused=True)
    return losses, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("name", METHODS)
def test_padded_steps_change_neither_losses_nor_gradients(name, memory_data, one_thread):
    td, spec = memory_transitions(60, seed=1, truncate_last=True)
    module = make_module(name, spec)
    batch = sampler(td, module, batch_size=32).sample(0)
    assert 0 < int((~batch[schema.MASK]).sum()) and bool(batch[schema.MASK].any())
    losses, grads = losses_and_grads(module, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    noisy_losses, noisy_grads = losses_and_grads(module, perturb_padding(batch))
    for key in losses:
        torch.testing.assert_close(noisy_losses[key], losses[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, noisy_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the check can fail: the same noise at one REAL step changes the losses
    real = batch.clone()
    real[schema.REWARD][0, 0] += 3.0
    real[schema.OBS][0, 0] += 3.0
    changed = module.losses(real)
    assert any(not torch.allclose(changed[k], losses[k]) for k in losses)


def test_terminated_steps_stop_bootstrapping_and_truncated_steps_continue(one_thread):
    td, spec = memory_transitions(40, seed=2, truncate_last=True)
    module = make_module("qmix_cql", spec)
    batch = sampler(td, module, batch_size=64).sample(0)
    target, reward = module.td_target(batch), batch[schema.REWARD]
    terminated, truncated = batch[schema.TERMINATED], batch[schema.TRUNCATED]
    assert target.shape == (64, 4, 1)
    assert torch.equal(target[terminated], reward[terminated])
    if bool(truncated.any()):
        assert not torch.allclose(target[truncated], reward[truncated])
    assert not torch.allclose(target[~terminated], reward[~terminated])


# ---- every recurrent method through the harness path --------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_recurrent_method_trains_round_trips_and_evaluates_with_hidden_state(name, memory_data, tmp_path, one_thread):
    td, spec = memory_data
    module = make_module(name, spec)
    dm = sampler(td, module)
    before = copy.deepcopy(module.state_dict())
    for iteration in range(3):
        stats = module.train_step(dm.sample(iteration))
    assert all(torch.isfinite(v) for v in stats.values())
    names = {id(p): n for n, p in module.named_parameters()}
    for group, nets in module.parameter_groups().items():
        moved = [not torch.equal(p, before[names[id(p)]]) for net in nets for p in net.parameters()]
        assert any(moved), f"group {group} did not move"
    for online, target in module._target_pairs:  # Polyak: targets lag behind the online networks
        assert any(not torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters()))
    assert isinstance(getattr(module, "actor", getattr(module, "q", None)), GRUAgent)

    # checkpoint round trip, and the saved policy: the same actions over an episode (hidden state carried)
    clone = registry.get("algorithm", name).from_spec(spec, recurrent=True, **{**SMALL, **MIXER[name]})
    clone.load_state_dict(module.state_dict())
    save_policy(tmp_path / "policy.pt", module, module.config_yaml)
    policy, fresh = load_policy(tmp_path / "policy.pt"), Policy(module)
    clone.reset_policy_state()
    episode = td[: 3 * 8].reshape(8, 3)  # 8 episodes, step by step
    for t in range(3):
        obs, mask = episode[schema.OBS][:, t], episode[schema.ACTION_MASK][:, t]
        action = fresh.act(obs, mask)
        assert action.shape == (8, N_AGENTS) and action.dtype == torch.int64
        assert torch.equal(action, clone.act(obs, mask)) and torch.equal(action, policy.act(obs, mask))

    result = rollout_returns(MemoryEnv(8), Policy(module).act, episodes=16, seed=0)
    assert result["episodes"] == 16 and 0.0 <= result["mean"] <= 1.0


def test_reset_forgets_the_hidden_state_of_finished_envs_only(memory_data):
    td, spec = memory_data
    policy = Policy(make_module("bc", spec))
    cue = torch.tensor([[0, 1], [1, 0]])
    policy.act(memory_observation(cue, 0))
    kept = policy.module._policy_state.clone()
    policy.reset_hidden(torch.tensor([True, False]))
    state = policy.module._policy_state
    assert bool((state[0] == 0).all()) and torch.equal(state[1], kept[1])
    policy.reset_hidden()
    assert policy.module._policy_state is None


def test_fit_trains_a_recurrent_method_end_to_end(memory_data, tmp_path, one_thread):
    from lightning_marl.config import load_config
    from lightning_marl.data.dataset import write_dataset
    from lightning_marl.run import fit

    td, spec = memory_data
    dataset = write_dataset(tmp_path / "memory", td, {"spec": spec, "quality": "expert"})
    cfg = load_config(None, [
        "algorithm.name=icq", "algorithm.recurrent=true", "algorithm.slice_len=4", "algorithm.gru_hidden=16",
        "algorithm.mixer_embed=8", "algorithm.steps=6", "algorithm.batch_size=8", f"data.path={dataset.path}",
        f"run_dir={tmp_path / 'run'}", "progress=false", "log_every=3", "checkpoint_every=3", "logger=csv",
    ])
    summary = fit(cfg)
    assert summary["module"].iteration == 6 and summary["module"].slice_len == 4
    policy = load_policy(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(policy.module.actor, GRUAgent)
    result = rollout_returns(MemoryEnv(4), policy.act, episodes=8)
    assert result["episodes"] == 8


# ---- learning: memory is needed ---------------------------------------------------------
def memory_return(recurrent: bool, td, spec, steps: int = 250, name: str = "bc", seed: int = 0,
                  lr: float = 3e-3) -> float:
    torch.manual_seed(seed)
    method = registry.get("algorithm", name)
    if recurrent:
        module = method.from_spec(spec, recurrent=True, gru_hidden=32, slice_len=4, lr=lr, **MIXER[name])
    else:
        module = method.from_spec(spec, hidden=[64, 64], lr=lr, **MIXER[name])
    dataset = Dataset(path=None, transitions=td, metadata={})
    dm = OfflineDataModule(dataset, 32 if recurrent else 128, seed=seed, slice_len=module.slice_len,
                           prepare=module.prepare_transitions)
    for iteration in range(steps):
        module.train_step(dm.sample(iteration))
    return rollout_returns(MemoryEnv(32), Policy(module).act, episodes=64, seed=1)["mean"]


def test_recurrent_bc_remembers_the_cue_that_feed_forward_bc_cannot(memory_data, one_thread):
    td, spec = memory_data
    recurrent, feed_forward = memory_return(True, td, spec), memory_return(False, td, spec)
    print(f"memory task return: recurrent BC {recurrent:.3f}, feed-forward BC {feed_forward:.3f}")
    assert recurrent >= 0.95
    assert feed_forward <= 0.75  # chance: 0.5 (the cue is gone at the rewarded step)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qmix_cql", "icq", "cfcql", "omiga"])
def test_recurrent_value_methods_solve_the_memory_task(name, memory_data, one_thread):
    td, spec = memory_data
    returns = [memory_return(True, td, spec, steps=400, name=name, seed=seed, lr=1e-3) for seed in range(3)]
    print(f"{name} recurrent returns on the memory task: {returns}")
    assert min(returns) >= 0.95, returns


def test_rollout_returns_resets_the_policy_hidden_state_at_episode_starts():
    calls = []

    class Spy:
        def act(self, observation, mask):
            return torch.zeros(observation.shape[:2], dtype=torch.int64)

        def reset_hidden(self, done=None):
            calls.append(None if done is None else done.tolist())

    rollout_returns(MemoryEnv(2), Spy().act, episodes=4)
    assert calls == [None, [True, True], [True, True]]  # before the first step, then after each episode
