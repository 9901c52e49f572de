"""Throughput of our IQL, MA-TD3+BC and QMIX-CQL training steps against plain PyTorch loops.

The same treatment as ``benchmarks/throughput.py`` gives OMIGA (whose measuring machinery this
script imports: ``OtherLoad``, ``steps_per_second``, ``count_flops``, ``matmul_gflops``,
medians over alternating rounds), for each method and number of agents (batch 128, observation
17, state 17·n, MLPs 2x256, each method's config defaults otherwise):

* **ours**: ``train_step(batch)`` standalone: all losses from shared forwards, one backward of
  their sum, per-group clipping, Adam (foreach) per group, one fused Polyak update.
* **plain loop**: the method as reference implementations write it: one ``nn.Module`` per
  network (twin critics as two modules, targets deep-copied), one-hot agent ids concatenated
  to the inputs at every call, each loss from its own network calls, a separate backward +
  clip + Adam step per group and a per-parameter Python loop for the Polyak update. MA-TD3+BC's
  plain loop computes and steps its actor (and moves the targets) only every ``policy_delay``-th
  step, the way TD3 reference code does, and so does ours in one process. Under DDP ours
  computes the actor's loss at every step (every parameter needs a gradient at every step):
  ``matd3bc_ddp_schedule`` measures ours on that schedule against the same loop with the actor
  loss and its backward every step (the same FLOPs). MA-TD3+BC's plain loop gets observations
  normalised once in advance (reference code normalises its replay buffer), ours normalises in
  its step.
* Equivalence: from the same initial weights and batch the plain loop's losses and clipped
  gradients match ours to 1e-5 (TD3 on an iteration where the actor steps, with the same
  target-policy noise); tests/benchmarks/test_plain_loops.py checks this in CI.
* **GFLOP/s**: our matmul FLOPs per step (mean of two consecutive steps) times steps/s, against
  a dense 2048x2048 float32 matmul measured in the same run on the same threads.
* **bf16**: our step under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
* **matmul floor**: our step's matrix products alone, replayed back to back (two consecutive
  steps, so TD3's delayed actor is averaged; see ``benchmarks/matmul_floor.py``): the fastest
  any implementation doing these products could go, so ``floor / plain`` bounds the speed-up
  over the plain loop. ``bf16 matmul floor``: the same for our bf16-autocast step.

Methods: ``iql`` (independent per-agent critics, the default), ``iql_central`` (centralised
Q(s, a), V(s)), ``matd3bc``, ``matd3bc_ddp_schedule``, ``qmix_cql`` (discrete, 9 actions, random action masks).

Run:
    python benchmarks/methods_throughput.py --agents 3 6
    python benchmarks/methods_throughput.py --methods qmix_cql --agents 3 --profile
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import throughput as tp  # noqa: E402  (sets RL_LOGGING_LEVEL before torchrl is imported)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matmul_floor import MatmulReplay, record_matmuls  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torch import nn  # noqa: E402

from lightning_marl.algorithms.iql import IQL  # noqa: E402
from lightning_marl.algorithms.matd3bc import MATD3BC  # noqa: E402
from lightning_marl.algorithms.qmix_cql import QMIXCQL  # noqa: E402
from lightning_marl.data import schema  # noqa: E402
from lightning_marl.data.datamodule import sample_seed  # noqa: E402
from lightning_marl.data.schema import TaskSpec  # noqa: E402
from lightning_marl.nets.actors import TanhGaussianActor  # noqa: E402
from lightning_marl.nets.ensemble import EnsembleMLP  # noqa: E402

OBS_DIM, ACTION_DIM, N_ACTIONS, BATCH = tp.OBS_DIM, tp.ACTION_DIM, 9, tp.BATCH


# ---------------------------------------------------------------------------------------------
# Plain networks and helpers, reference-implementation style.
# ---------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear."""

    def __init__(self, num_in, num_out, num_hidden):
        super().__init__()
        self.fc1 = nn.Linear(num_in, num_hidden)
        self.fc2 = nn.Linear(num_hidden, num_hidden)
        self.out = nn.Linear(num_hidden, num_out)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


class QMixNet(nn.Module):
    """The QMIX mixer as pymarl writes it (hypernetworks on the state, bmm mixing)."""

    def __init__(self, state_dim, n_agents, embed_dim):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w_1 = nn.Linear(state_dim, embed_dim * n_agents)
        self.hyper_w_final = nn.Linear(state_dim, embed_dim)
        self.hyper_b_1 = nn.Linear(state_dim, embed_dim)
        self.V = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs, states):
        bs = agent_qs.shape[0]
        agent_qs = agent_qs.view(-1, 1, self.n_agents)
        w1 = torch.abs(self.hyper_w_1(states)).view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b_1(states).view(-1, 1, self.embed_dim)
        hidden = F.elu(torch.bmm(agent_qs, w1) + b1)
        w_final = torch.abs(self.hyper_w_final(states)).view(-1, self.embed_dim, 1)
        v = self.V(states).view(-1, 1, 1)
        return (torch.bmm(hidden, w_final) + v).view(bs, 1)


def agent_ids(batch_size, n):
    return torch.eye(n).expand(batch_size, -1, -1)


def soft_update(net, target, tau):
    for param, target_param in zip(net.parameters(), target.parameters()):
        target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)


def update(optimizer, loss, params, clip):
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


# ---------------------------------------------------------------------------------------------
# The plain loops.
# ---------------------------------------------------------------------------------------------
class PlainIQL:
    """IQL: V by expectile regression, twin Q by TD to V(s'), advantage-weighted actor."""

    def __init__(self, obs_dim, state_dim, action_dim, num_agent, hidden=256, lr=3e-4, gamma=0.99, tau=0.005,
                 grad_norm_clip=1.0, expectile=0.7, beta=3.0, max_weight=100.0, centralised=False):
        self.n, self.central = num_agent, centralised
        self.gamma, self.tau, self.clip = gamma, tau, grad_norm_clip
        self.expectile, self.beta, self.max_weight = expectile, beta, max_weight
        self.actor = tp.Actor(obs_dim + num_agent, action_dim, hidden)
        q_in = state_dim + num_agent * action_dim if centralised else obs_dim + action_dim + num_agent
        v_in = state_dim if centralised else obs_dim + num_agent
        self.q1, self.q2 = MLP(q_in, 1, hidden), MLP(q_in, 1, hidden)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.v = MLP(v_in, 1, hidden)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.q_params = list(self.q1.parameters()) + list(self.q2.parameters())
        self.q_optimizer = torch.optim.Adam(self.q_params, lr=lr)
        self.v_optimizer = torch.optim.Adam(self.v.parameters(), lr=lr)

    def compute_losses(self, o, s, a, r, mask, s_next, o_next):
        ids = agent_ids(o.shape[0], self.n)
        o_with_id = torch.cat([o, ids], -1)
        if self.central:
            q_in, v_in, v_next_in = torch.cat([s, a.flatten(1)], -1), s, s_next
        else:
            q_in, v_in, v_next_in = torch.cat([o, a, ids], -1), o_with_id, torch.cat([o_next, ids], -1)

        def out(x):  # [B, 1] centralised, [B, N] per agent
            return x if self.central else x.squeeze(-1)

        with torch.no_grad():
            q_bar = out(torch.min(self.q1_target(q_in), self.q2_target(q_in)))
            target = r + self.gamma * mask * out(self.v(v_next_in))
        q_loss = ((out(self.q1(q_in)) - target) ** 2).mean() + ((out(self.q2(q_in)) - target) ** 2).mean()

        v = out(self.v(v_in))
        diff = q_bar - v
        v_loss = (torch.abs(self.expectile - (diff < 0).float()) * diff**2).mean()

        exp_adv = torch.exp(self.beta * (q_bar - v.detach())).clamp(max=self.max_weight)
        log_pi = self.actor.get_log_density(o_with_id, a)
        policy_loss = -(exp_adv * log_pi).mean()
        return policy_loss, q_loss, v_loss

    def train_step(self, *inputs):
        policy_loss, q_loss, v_loss = self.compute_losses(*inputs)
        update(self.actor_optimizer, policy_loss, self.actor.parameters(), self.clip)
        update(self.q_optimizer, q_loss, self.q_params, self.clip)
        update(self.v_optimizer, v_loss, self.v.parameters(), self.clip)
        soft_update(self.q1, self.q1_target, self.tau)
        soft_update(self.q2, self.q2_target, self.tau)
        return policy_loss.item(), q_loss.item(), v_loss.item()


class PlainMATD3BC:
    """MA-TD3+BC as TD3+BC's reference code: critic every step, actor and targets every ``policy_freq``.

    ``actor_every_step=True``: the actor loss and its backward every step too (ours' schedule,
    the same FLOPs as ours), its optimiser and the targets still every ``policy_freq``.
    """

    def __init__(self, obs_dim, action_dim, num_agent, hidden=256, lr=3e-4, gamma=0.99, tau=0.005,
                 grad_norm_clip=1.0, alpha=2.5, policy_noise=0.2, noise_clip=0.5, policy_freq=2,
                 actor_every_step=False):
        self.actor_every_step = actor_every_step
        self.n, self.gamma, self.tau, self.clip, self.alpha = num_agent, gamma, tau, grad_norm_clip, alpha
        self.policy_noise, self.noise_clip, self.policy_freq = policy_noise, noise_clip, policy_freq
        self.total_it = 0
        self.generator = torch.Generator()
        self.actor = MLP(obs_dim + num_agent, action_dim, hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.q1 = MLP(obs_dim + action_dim + num_agent, 1, hidden)
        self.q2 = MLP(obs_dim + action_dim + num_agent, 1, hidden)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_params = list(self.q1.parameters()) + list(self.q2.parameters())
        self.critic_optimizer = torch.optim.Adam(self.critic_params, lr=lr)

    def policy(self, net, o_with_id):
        return torch.tanh(net(o_with_id))

    def actor_due(self) -> bool:
        return (self.total_it + 1) % self.policy_freq == 0

    def compute_losses(self, o, a, r, mask, o_next):
        """(actor loss or None when not due, critic loss), both from the current weights."""
        ids = agent_ids(o.shape[0], self.n)
        o_with_id, o_next_with_id = torch.cat([o, ids], -1), torch.cat([o_next, ids], -1)
        with torch.no_grad():
            next_action = self.policy(self.actor_target, o_next_with_id)
            noise = torch.randn(next_action.shape, generator=self.generator) * self.policy_noise
            next_action = (next_action + noise.clamp(-self.noise_clip, self.noise_clip)).clamp(-1.0, 1.0)
            target_in = torch.cat([o_next, next_action, ids], -1)
            target_q = torch.min(self.q1_target(target_in), self.q2_target(target_in)).squeeze(-1)
            target_q = r + mask * self.gamma * target_q
        q_in = torch.cat([o, a, ids], -1)
        critic_loss = F.mse_loss(self.q1(q_in).squeeze(-1), target_q) + F.mse_loss(self.q2(q_in).squeeze(-1), target_q)

        actor_loss = None
        if self.actor_every_step or self.actor_due():
            pi = self.policy(self.actor, o_with_id)
            q = self.q1(torch.cat([o, pi, ids], -1)).squeeze(-1)
            lmbda = self.alpha / q.abs().mean(0).detach()
            actor_loss = (-lmbda * q + ((pi - a) ** 2).mean(-1)).mean()
        return actor_loss, critic_loss

    def train_step(self, *inputs):
        actor_loss, critic_loss = self.compute_losses(*inputs)
        if actor_loss is not None:  # its backward first: it reads the critic's pre-step weights
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
        update(self.critic_optimizer, critic_loss, self.critic_params, self.clip)
        if self.actor_due():
            nn.utils.clip_grad_norm_(self.actor.parameters(), self.clip)
            self.actor_optimizer.step()
            soft_update(self.actor, self.actor_target, self.tau)
            soft_update(self.q1, self.q1_target, self.tau)
            soft_update(self.q2, self.q2_target, self.tau)
        self.total_it += 1
        return critic_loss.item()


class PlainQMIXCQL:
    """QMIX with double-Q targets and a per-agent CQL penalty over available actions."""

    def __init__(self, obs_dim, state_dim, n_actions, num_agent, hidden=256, embed=32, lr=3e-4, gamma=0.99,
                 tau=0.005, grad_norm_clip=1.0, alpha=1.0):
        self.n, self.gamma, self.tau, self.clip, self.alpha = num_agent, gamma, tau, grad_norm_clip, alpha
        self.agent = MLP(obs_dim + num_agent, n_actions, hidden)
        self.mixer = QMixNet(state_dim, num_agent, embed)
        self.target_agent, self.target_mixer = copy.deepcopy(self.agent), copy.deepcopy(self.mixer)
        self.params = list(self.agent.parameters()) + list(self.mixer.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=lr)

    def compute_losses(self, o, s, a, r, mask, s_next, o_next, avail, avail_next):
        ids = agent_ids(o.shape[0], self.n)
        o_with_id, o_next_with_id = torch.cat([o, ids], -1), torch.cat([o_next, ids], -1)
        q_values = self.agent(o_with_id)
        chosen_q = torch.gather(q_values, -1, a.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            next_q = self.agent(o_next_with_id)
            next_q[~avail_next] = float("-inf")
            next_action = next_q.argmax(-1, keepdim=True)
            target_next_q = torch.gather(self.target_agent(o_next_with_id), -1, next_action).squeeze(-1)
            targets = r + self.gamma * mask * self.target_mixer(target_next_q, s_next)
        q_tot = self.mixer(chosen_q, s)
        td_loss = ((q_tot - targets) ** 2).mean()
        masked_q = q_values.masked_fill(~avail, float("-inf"))
        cql_loss = (torch.logsumexp(masked_q, -1) - chosen_q).mean()
        return (td_loss + self.alpha * cql_loss,)

    def train_step(self, *inputs):
        (loss,) = self.compute_losses(*inputs)
        update(self.optimizer, loss, self.params, self.clip)
        soft_update(self.agent, self.target_agent, self.tau)
        soft_update(self.mixer, self.target_mixer, self.tau)
        return loss.item()


# ---------------------------------------------------------------------------------------------
# Batches, the cases (ours, its plain loop, the network pairing) and the equivalence check.
# ---------------------------------------------------------------------------------------------
def discrete_transitions(n: int, size: int, generator: torch.Generator, k: int = N_ACTIONS) -> TensorDict:
    """Random discrete transitions: random action masks (each action available w.p. 0.7, the
    dataset action always, the first next action always), ~5 % terminal."""
    td = tp.random_transitions(n, size, generator)
    action = torch.randint(k, (size, n), generator=generator)
    avail = torch.rand(size, n, k, generator=generator) < 0.7
    avail.scatter_(-1, action.unsqueeze(-1), True)
    avail_next = torch.rand(size, n, k, generator=generator) < 0.7
    avail_next[..., 0] = True
    td.set(schema.ACTION, action)
    td.set(schema.ACTION_MASK, avail)
    td.set(schema.NEXT_ACTION_MASK, avail_next)
    return td


def _core(batch):
    o, s, a, r, mask, s_next, o_next = tp.plain_inputs(batch)
    return o, s, a, r, mask, s_next, o_next


@dataclass
class Case:
    """One method: how to build ours and its plain loop, its batches and the plain loop's inputs."""

    name: str
    build_ours: Callable[[int], object]
    build_plain: Callable[[object], object]  # from ours: same hyper-parameters, same weights copied
    batch: Callable[[int, int, torch.Generator], TensorDict]
    plain_inputs: Callable[[object, TensorDict], tuple]
    loss_names: tuple[str, ...]
    network_pairs: Callable[[object, object], list]  # [(name, ours module, plain module)]


def spec(n: int, discrete: bool = False) -> TaskSpec:
    if discrete:
        return TaskSpec(n_agents=n, obs_dim=OBS_DIM, state_dim=OBS_DIM * n, discrete=True, n_actions=N_ACTIONS)
    return tp.task_spec(n)


def _hidden(module) -> int:
    hidden = list(module.config.hidden)
    assert hidden == [hidden[0]] * 2, "the plain loops are written for two equal hidden layers"
    return hidden[0]


def _iql_case(centralised: bool) -> Case:
    def build_ours(n):
        return IQL.from_spec(spec(n), batch_size=BATCH, centralised=centralised)

    def build_plain(m):
        c = m.config
        return PlainIQL(OBS_DIM, m.spec.mixer_state_dim, ACTION_DIM, m.spec.n_agents, hidden=_hidden(m), lr=c.lr,
                        gamma=c.gamma, tau=c.tau, grad_norm_clip=c.grad_clip, expectile=c.expectile, beta=c.beta,
                        max_weight=c.max_weight, centralised=centralised)

    def pairs(m, p):
        v = m.v.net if centralised else m.v
        return [("actor", m.actor, p.actor), ("q", m.q.net, [p.q1, p.q2]),
                ("q_target", m.q_target.net, [p.q1_target, p.q2_target]), ("v", v, p.v)]

    return Case("iql_central" if centralised else "iql", build_ours, build_plain, tp.random_transitions,
                lambda m, b: _core(b), ("policy", "q", "v"), pairs)


def _matd3bc_case(actor_every_step: bool) -> Case:
    def build_ours(n):
        module = MATD3BC.from_spec(spec(n), batch_size=BATCH)
        if actor_every_step:  # as under DDP: the actor's loss at every step
            module.every_loss_each_step = lambda: True
        return module

    def build_plain(m):
        c = m.config
        return PlainMATD3BC(OBS_DIM, ACTION_DIM, m.spec.n_agents, hidden=_hidden(m), lr=c.lr, gamma=c.gamma,
                            tau=c.tau, grad_norm_clip=c.grad_clip, alpha=c.alpha, policy_noise=c.policy_noise,
                            noise_clip=c.noise_clip, policy_freq=c.policy_delay, actor_every_step=actor_every_step)

    def plain_inputs(m, b):  # observations normalised in advance, as reference code does its buffer
        o, _, a, r, mask, _, o_next = _core(b)
        return m.normalise_observation(o), a, r, mask, m.normalise_observation(o_next)

    def pairs(m, p):
        return [("actor", m.actor, p.actor), ("actor_target", m.actor_target, p.actor_target),
                ("q", m.q.net, [p.q1, p.q2]), ("q_target", m.q_target.net, [p.q1_target, p.q2_target])]

    name = "matd3bc_ddp_schedule" if actor_every_step else "matd3bc"
    return Case(name, build_ours, build_plain, tp.random_transitions, plain_inputs, ("policy", "q"), pairs)


def _qmix_cql_case() -> Case:
    def build_ours(n):
        return QMIXCQL.from_spec(spec(n, discrete=True), batch_size=BATCH)

    def build_plain(m):
        c = m.config
        return PlainQMIXCQL(OBS_DIM, m.spec.mixer_state_dim, N_ACTIONS, m.spec.n_agents, hidden=_hidden(m),
                            embed=c.mixer_embed, lr=c.lr, gamma=c.gamma, tau=c.tau, grad_norm_clip=c.grad_clip,
                            alpha=c.alpha)

    def plain_inputs(m, b):
        return (*_core(b), b.get(schema.ACTION_MASK), b.get(schema.NEXT_ACTION_MASK))

    def pairs(m, p):
        return [("agent", m.q, p.agent), ("mixer", m.mixer, p.mixer),
                ("agent_target", m.q_target, p.target_agent), ("mixer_target", m.mixer_target, p.target_mixer)]

    return Case("qmix_cql", build_ours, build_plain, discrete_transitions, plain_inputs, ("q",), pairs)


CASES = {case.name: case for case in (_iql_case(False), _iql_case(True), _matd3bc_case(False), _matd3bc_case(True),
                                          _qmix_cql_case())}


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def parameter_pairs(case: Case, module, plain) -> list[tuple[str, torch.Tensor, Callable, torch.Tensor]]:
    """(name, ours, view, plain's) for every parameter of ours, paired network by network in order:
    ``view(ours)`` (and ``view(ours.grad)``) is what corresponds to plain's tensor. Our stacked twin
    critics (an ``EnsembleMLP`` paired with a list of plain networks) pair member k's slice of each
    stacked layer, transposed ([in, out] against ``nn.Linear``'s [out, in]), with plain network k."""
    pairs = []
    for name, ours, theirs in case.network_pairs(module, plain):
        if isinstance(ours, EnsembleMLP):
            for k, member in enumerate(theirs):
                linears = [layer for layer in member.modules() if isinstance(layer, nn.Linear)]
                assert len(linears) == len(ours.layers), f"{case.name}.{name}{k + 1}: layer counts differ"
                for i, (layer, linear) in enumerate(zip(ours.layers, linears)):
                    pairs.append((f"{name}{k + 1}.layer{i}.weight", layer.weight, lambda t, k=k: t[k].t(), linear.weight))
                    pairs.append((f"{name}{k + 1}.layer{i}.bias", layer.bias, lambda t, k=k: t[k, 0], linear.bias))
            continue
        if isinstance(ours, TanhGaussianActor):
            pairs.extend(tp.actor_pairs(name, ours, theirs))
            continue
        mine, their = list(ours.parameters()), list(theirs.parameters())
        assert len(mine) == len(their), f"{case.name}.{name}: {len(mine)} vs {len(their)} parameters"
        pairs.extend((f"{name}[{i}]", a, _same, b) for i, (a, b) in enumerate(zip(mine, their)))
    for name, ours, view, theirs in pairs:
        assert view(ours).shape == theirs.shape, f"{case.name}.{name}: {tuple(view(ours).shape)} vs {tuple(theirs.shape)}"
    covered = {id(ours) for _, ours, _, _ in pairs}
    assert covered == {id(p) for p in module.parameters()}, "every parameter of ours must be paired"
    return pairs


def build(case: Case, n: int, pool: list[TensorDict] | None = None):
    """Ours (normaliser fitted on ``pool`` when it normalises) and its plain loop with the same weights."""
    module = case.build_ours(n)
    if module.normalises_observations and pool:
        module.fit_observation_normaliser(torch.cat(pool))
    plain = case.build_plain(module)
    with torch.no_grad():
        for _, ours, view, theirs in parameter_pairs(case, module, plain):
            theirs.copy_(view(ours))
    return module, plain


def _sync_randomness(module, plain, iteration: int) -> None:
    """TD3: the plain loop at ours' ``iteration``, with the same target-policy noise as ours there."""
    if isinstance(plain, PlainMATD3BC):
        plain.total_it = iteration
        plain.generator.manual_seed(sample_seed(module.seed, 0, iteration) ^ 0x5EED)


def check_equivalence(case: Case, n: int, tol: float = 1e-5, perturb: Callable | None = None) -> tuple[bool, str]:
    """Same initial weights and batch: the same losses and clipped gradients (``perturb(plain)``,
    if given, changes the plain loop first; tests use it to see that a wrong loop is caught)."""
    torch.manual_seed(1234)
    batch = case.batch(n, BATCH, torch.Generator().manual_seed(99))
    module, plain = build(case, n, [case.batch(n, 512, torch.Generator().manual_seed(98))])
    if perturb is not None:
        perturb(plain)
    if isinstance(module, MATD3BC):
        module.iteration = module.config.policy_delay - 1  # an iteration where the actor steps
    inputs, iteration = case.plain_inputs(module, batch), module.iteration
    with torch.no_grad():
        module._seed_rng()
        ours_losses = module.losses(batch)
        _sync_randomness(module, plain, iteration)
        theirs = dict(zip(case.loss_names, plain.compute_losses(*inputs)))
    loss_diff = max(abs(ours_losses[k].item() - theirs[k].item()) / max(1.0, abs(theirs[k].item())) for k in theirs)
    module.train_step(batch)
    _sync_randomness(module, plain, iteration)
    plain.train_step(*inputs)
    grad_diff = param_diff = 0.0
    for name, ours, view, their in parameter_pairs(case, module, plain):
        param_diff = max(param_diff, (view(ours) - their).abs().max().item())
        if ours.grad is not None:
            if their.grad is None:
                return False, f"{name} has a gradient in ours, none in the plain loop"
            grad_diff = max(grad_diff, (view(ours.grad) - their.grad).abs().max().item())
    ok = loss_diff <= tol and grad_diff <= tol
    return ok, (f"losses differ by {loss_diff:.1e} (relative), clipped gradients by {grad_diff:.1e}; "
                f"parameters after one step (targets included) by {param_diff:.1e}")


# ---------------------------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------------------------
def mean_flops(step, items, steps: int = 2) -> float:
    """Matmul FLOPs per step over ``steps`` consecutive steps (TD3's actor is delayed)."""
    return sum(tp.count_flops(step, items[i]) for i in range(steps)) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["iql", "iql_central", "matd3bc", "matd3bc_ddp_schedule",
                                                          "qmix_cql"],
                        choices=sorted(CASES))
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds; more (up to --max-rounds) until every column has this many "
                             "undisturbed measurements; medians of those are reported")
    parser.add_argument("--max-rounds", type=int, default=None, help="default: 2 x --rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-bf16", action="store_true", help="leave out the bfloat16-autocast column")
    args = tp.parse_measurement_arguments(parser, argv)
    threads = torch.get_num_threads()
    print(f"# IQL / MA-TD3+BC / QMIX-CQL throughput: torch {torch.__version__}, threads {threads} "
          f"(of {os.cpu_count()} CPUs), {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# load average (1 min) at start {os.getloadavg()[0]:.2f}: above ~1 means other processes share the cores")
    print(f"# batch {BATCH}, obs {OBS_DIM}, continuous action {ACTION_DIM} / {N_ACTIONS} discrete actions, "
          f"hidden 256x2; {args.seconds:g} s per measurement, medians of {args.rounds} or more undisturbed rounds; "
          f"malloc: {args.malloc}")
    for name in args.methods:
        for n in args.agents:
            ok, detail = check_equivalence(CASES[name], n)
            print(f"# {name}, {n} agents: baseline matches ours: {'yes' if ok else 'no'} ({detail})")

    torch.manual_seed(0)
    setups = {}
    for name in args.methods:
        case = CASES[name]
        for n in args.agents:
            generator = torch.Generator().manual_seed(n)
            pool = [case.batch(n, BATCH, generator) for _ in range(64)]
            module, plain = build(case, n, pool)
            plain_pool = [case.plain_inputs(module, b) for b in pool]
            s = dict(ours=(module.train_step, pool), plain=(lambda x, p=plain: p.train_step(*x), plain_pool))
            if not args.no_bf16:
                s["bf16"] = (tp.bf16_step(module), pool)
            for step, items in s.values():
                tp.steps_per_second(step, items, args.warmup)
            s["flops"], s["plain_flops"] = mean_flops(*s["ours"]), mean_flops(*s["plain"])
            # two consecutive steps (TD3's actor is delayed); a replay counts as two steps
            two_steps = (lambda step: lambda items: [step(item) for item in items])
            floor = MatmulReplay(record_matmuls(two_steps(module.train_step), pool[:2]))
            s["floor"] = (lambda _, f=floor: f.run_once(), [None])
            if "bf16" in s:
                bf16_floor = MatmulReplay(record_matmuls(two_steps(s["bf16"][0]), pool[2:4]))
                s["bf16_floor"] = (lambda _, f=bf16_floor: f.run_once(), [None])
            s["results"] = {variant: [] for variant in ("ours", "plain", "floor", "bf16", "bf16_floor") if variant in s}
            setups[name, n] = s
            print(f"# {name}, {n} agents: matmul FLOPs per step (forward+backward, mean of 2 steps): "
                  f"ours {s['flops'] / 1e6:.1f} M, plain loop {s['plain_flops'] / 1e6:.1f} M")

    load = tp.OtherLoad(args.max_other_load, args.retries, args.patience)
    max_rounds = args.max_rounds or 2 * args.rounds
    peaks = {"mm": [], "onednn": []}

    def enough() -> bool:
        cells = [values for values in peaks.values() if values] + [
            values for s in setups.values() for values in s["results"].values()]
        return all(sum(ok for _, ok in values) >= args.rounds for values in cells)

    r = 0
    while r < max_rounds and (r < args.rounds or not enough()):
        load.wait_quiet()
        tp.measure_peaks(load, args.seconds, peaks)
        for s in setups.values():
            order = list(s["results"]) if r % 2 == 0 else list(s["results"])[::-1]
            for variant in order:
                step, items = s[variant]
                s["results"][variant].append(load.measure(lambda: tp.steps_per_second(step, items, args.seconds)))
        r += 1
        print(f"# round {r}: peak {', '.join(f'{k} {tp.fmt(*v[-1], digits=0)}' for k, v in peaks.items() if v)} "
              "GFLOP/s; " + "; ".join(
            f"{name} {n}: " + ", ".join(f"{v} {tp.fmt(*values[-1])}" for v, values in s["results"].items())
            for (name, n), s in setups.items()), flush=True)

    peak, peak_clean, peak_text = tp.machine_peak(peaks)
    mm_peak = tp.median(peaks["mm"])[0] or float("nan")
    print(f"# float32 matmul peak (2048x2048, GFLOP/s, medians): {peak_text}; the fraction of peak is of the faster")
    print(f"# load average (1 min) at end {os.getloadavg()[0]:.2f} (this benchmark itself counts ~{threads}); "
          f"{load.discarded} measurement(s) retried because other processes used > {args.max_other_load:g} cores, "
          f"{args.patience - load.wait_left:.0f} s spent waiting for quiet"
          + ("" if load.available else " (not checked: no /proc)"))
    print("# * in a round line: disturbed even after the retries, left out of the medians; * in the table: no "
          "undisturbed measurement in any round, the median of disturbed ones (not to be trusted)")
    for (name, n), s in setups.items():
        print(tp.per_round_line(f"{name}, {n} agents", s["results"]))
    for name in args.methods:
        print(f"\n## {name}\n")
        print("| agents | ours steps/s | plain loop steps/s | ours / plain | matmul floor | floor / plain "
              "| ours GFLOP/s | peak GFLOP/s | fraction of peak | of torch.mm's peak | floor's fraction of peak "
              "| ours bf16 steps/s | bf16 / plain | bf16 matmul floor |")
        print("|---:|" + "---:|" * 13)
        for n in args.agents:
            s = setups[name, n]
            value = {variant: tp.median(values) for variant, values in s["results"].items()}
            for variant in ("floor", "bf16_floor"):  # one replay = two steps
                if variant in value and value[variant][0] is not None:
                    value[variant] = (2 * value[variant][0], value[variant][1])
            (ours, ours_clean), (plain, plain_clean) = value["ours"], value["plain"]
            bf16, bf16_clean = value.get("bf16", (None, True))
            floor, floor_clean = value["floor"]
            achieved = s["flops"] * ours / 1e9
            print(f"| {n} | {tp.fmt(ours, ours_clean)} | {tp.fmt(plain, plain_clean)} "
                  f"| {tp.fmt(ours / plain, ours_clean and plain_clean, 2)} | {tp.fmt(floor, floor_clean)} "
                  f"| {tp.fmt(floor / plain, floor_clean and plain_clean, 2)} | {tp.fmt(achieved, ours_clean)} "
                  f"| {tp.fmt(peak, peak_clean, 0)} | {achieved / peak:.1%}{'' if ours_clean and peak_clean else '*'} "
                  f"| {achieved / mm_peak:.1%} | {s['flops'] * (floor or float('nan')) / 1e9 / peak:.1%} "
                  f"| {tp.fmt(bf16, bf16_clean)} "
                  f"| {tp.fmt(bf16 / plain if bf16 else None, bf16_clean and plain_clean, 2)} "
                  f"| {tp.fmt(*value.get('bf16_floor', (None, True)))} |")
    if args.profile:
        for (name, n), s in setups.items():
            print(f"\n# {name}")
            tp.profile_step(n, *s["ours"])


if __name__ == "__main__":
    main()
