"""Throughput of our OMIGA training step against a plain PyTorch loop, and against the CPU's peak.

What is measured, for each number of agents (batch 128, observation 17, continuous action of
dimension 1, state = the concatenated observations' size 17·n, MLPs 2x256, mixer hidden 64; the
``OMIGAConfig`` defaults otherwise):

* **ours**: ``OMIGA.train_step(batch)`` run standalone (no Trainer): three losses from one
  forward, one backward of their sum, per-group gradient clipping, three Adam steps, one fused
  Polyak update of the targets.
* **plain loop**: the same method written the way reference implementations are written: one
  ``nn.Module`` per network (actor, Q, V, mixer and deep-copied targets), the per-agent input
  built each step by concatenating one-hot agent ids, each loss from its own network calls, a
  separate backward + clip + Adam step per group (policy, Q+mixer, V) and a per-parameter Python
  loop for the Polyak update. Same networks, same equations (METHODS.md §1), same FLOPs.
  At start-up, from the same initial weights and batch, its three losses and its clipped
  gradients are checked against ours to 1e-5 ("baseline matches ours"); the parameter
  difference after one full step (Adam, Polyak) is printed too.
* **reference-style loop**: the plain loop with the rest of the published OMIGA code's habits
  (``ReferenceStyleOMIGA``): target-network forwards recorded by autograd and detached
  afterwards, the global state rebuilt from per-agent slices, a diagnostics dict every step.
  Same losses and gradients (checked at start-up and in tests/benchmarks).
* **matmul floor** (``benchmarks/matmul_floor.py``): our step's matrix products alone (recorded
  with their shapes, strides and dtypes, forward and backward), replayed back to back with
  nothing else. No implementation doing these products at this precision can beat it, so
  ``floor / plain`` is the largest speed-up over the plain loop that the arithmetic allows.
  ``bf16 matmul floor``: the same for the products of our bf16-autocast step.
* **lightning** (``--lightning``): the same OMIGA through a real ``lightning.Trainer`` fit loop
  (manual optimisation, ``OfflineDataModule`` sampling from a small dataset written with
  ``write_dataset``), so this column includes batch sampling and the Trainer's per-step overhead;
  timed from a batch after the warm-up to the last batch end (Trainer start-up excluded).
* **GFLOP/s**: the matmul FLOPs of one of our steps (forward + backward, counted with
  ``torch.utils.flop_counter.FlopCounterMode``; optimiser element-wise work is not counted) times
  steps/s, beside a dense 2048x2048 float32 matmul measured in the same run on the same threads.

Ours and the plain loop train on a pool of 64 random batches built in advance (sampling cost
excluded; the plain loop also gets its tensors pre-extracted from the TensorDict). Timings on
these machines drift by ±20 % over minutes, so after a warm-up every round measures each variant
(order alternating between rounds) for ``--seconds`` and the table reports medians over rounds.
The machine may be shared: a measurement during which other processes kept more than
``--max-other-load`` cores busy (read from /proc) is retried once the machine is quiet, left out
of the medians if it stays disturbed, and rounds continue (up to ``--max-rounds``) until every
column has ``--rounds`` undisturbed measurements; a ``*`` marks a value with none.

Run:
    python benchmarks/throughput.py --agents 3 6
    python benchmarks/throughput.py --agents 3 6 --lightning --seconds 3 --rounds 5 --threads 2
    python benchmarks/throughput.py --agents 3 --profile      # also where our step's time goes
    python benchmarks/throughput.py --agents 3 6 --bf16       # also our step under bfloat16 autocast
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributions import Normal  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lightning_marl.algorithms.omiga import OMIGA  # noqa: E402
from lightning_marl.data import schema  # noqa: E402
from lightning_marl.data.schema import TaskSpec  # noqa: E402
from lightning_marl.nets.linear import onednn_matmul_available  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_floor import MatmulReplay, calls_per_second, count_operations, record_matmuls  # noqa: E402

OBS_DIM, ACTION_DIM, BATCH = 17, 1, 128


# ---------------------------------------------------------------------------------------------
# The plain PyTorch baseline, written in the style of the authors' reference implementation.
# ---------------------------------------------------------------------------------------------
EPS = 1e-7
MEAN_MIN, MEAN_MAX = -9.0, 9.0
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class Actor(nn.Module):
    def __init__(self, num_state, num_action, num_hidden):
        super().__init__()
        self.fc1 = nn.Linear(num_state, num_hidden)
        self.fc2 = nn.Linear(num_hidden, num_hidden)
        self.mu_head = nn.Linear(num_hidden, num_action)
        self.sigma_head = nn.Linear(num_hidden, num_action)

    def _get_outputs(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mu = torch.clamp(self.mu_head(x), MEAN_MIN, MEAN_MAX)
        log_sigma = torch.clamp(self.sigma_head(x), LOG_STD_MIN, LOG_STD_MAX)
        return Normal(mu, torch.exp(log_sigma))

    def get_log_density(self, x, y):
        base = self._get_outputs(x)
        y = torch.clamp(y, -1.0 + EPS, 1.0 - EPS)
        u = torch.atanh(y)
        logp = base.log_prob(u).sum(dim=-1)
        logp = logp - (2 * (torch.log(torch.tensor(2.0)) - u - F.softplus(-2 * u))).sum(dim=-1)
        return logp


class V_critic(nn.Module):
    def __init__(self, num_state, num_hidden):
        super().__init__()
        self.fc1 = nn.Linear(num_state, num_hidden)
        self.fc2 = nn.Linear(num_hidden, num_hidden)
        self.state_value = nn.Linear(num_hidden, 1)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.state_value(x)


class Q_critic(nn.Module):
    def __init__(self, num_state, num_action, num_hidden):
        super().__init__()
        self.fc1 = nn.Linear(num_state + num_action, num_hidden)
        self.fc2 = nn.Linear(num_hidden, num_hidden)
        self.q_value = nn.Linear(num_hidden, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], dim=-1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.q_value(x)


class MixNet(nn.Module):
    def __init__(self, state_dim, num_agent, mix_hidden):
        super().__init__()
        self.num_agent = num_agent
        self.f_v = nn.Linear(state_dim, mix_hidden)
        self.w_v = nn.Linear(mix_hidden, num_agent)
        self.b_v = nn.Linear(mix_hidden, 1)

    def forward(self, s):
        x = F.relu(self.f_v(s))
        w = torch.abs(self.w_v(x)).view(-1, self.num_agent, 1)
        b = self.b_v(x).view(-1, 1)
        return w, b


class PlainOMIGA:
    """OMIGA as a straightforward loop: separate networks, losses, backwards and optimisers."""

    def __init__(self, obs_dim, state_dim, action_dim, num_agent, hidden=256, mix_hidden=64,
                 lr=5e-4, alpha=10.0, gamma=0.99, tau=0.005, grad_norm_clip=1.0):
        self._num_agent = num_agent
        self._alpha, self._gamma, self._tau, self._grad_norm_clip = alpha, gamma, tau, grad_norm_clip
        self._policy_network = Actor(obs_dim + num_agent, action_dim, hidden)
        self._q_network = Q_critic(obs_dim + num_agent, action_dim, hidden)
        self._q_target_network = copy.deepcopy(self._q_network)
        self._v_network = V_critic(obs_dim + num_agent, hidden)
        self._v_target_network = copy.deepcopy(self._v_network)
        self._mix_network = MixNet(state_dim, num_agent, mix_hidden)
        self._mix_target_network = copy.deepcopy(self._mix_network)
        self._policy_optimizer = torch.optim.Adam(self._policy_network.parameters(), lr=lr)
        self._q_optimizer = torch.optim.Adam(
            list(self._q_network.parameters()) + list(self._mix_network.parameters()), lr=lr)
        self._v_optimizer = torch.optim.Adam(self._v_network.parameters(), lr=lr)

    def compute_losses(self, o, s, a, r, mask, s_next, o_next):
        one_hot_agent_id = torch.eye(self._num_agent).expand(o.shape[0], -1, -1)
        o_with_id = torch.cat((o, one_hot_agent_id), dim=-1)
        o_next_with_id = torch.cat((o_next, one_hot_agent_id), dim=-1)

        # Q_tot loss
        w_s, b_s = self._mix_network(s)
        q_values = self._q_network(o_with_id, a)
        q_total = (w_s * q_values).sum(dim=-2) + b_s
        with torch.no_grad():
            v_next_target_values = self._v_target_network(o_next_with_id)
            w_next_target_s, b_next_target_s = self._mix_target_network(s_next)
            v_next_target_total = (w_next_target_s * v_next_target_values).sum(dim=-2) + b_next_target_s
            expected_q_total = r + self._gamma * mask * v_next_target_total
        q_loss = ((q_total - expected_q_total.detach()) ** 2).mean()

        # local V loss
        with torch.no_grad():
            w_target_s, _ = self._mix_target_network(s)
            q_target_values = self._q_target_network(o_with_id, a)
        v_values = self._v_network(o_with_id)
        z = 1 / self._alpha * (w_target_s.detach() * q_target_values.detach() - w_target_s.detach() * v_values)
        z = torch.clamp(z, min=-10.0, max=10.0)
        max_z = torch.max(z)
        if max_z.item() < -1.0:
            max_z = torch.tensor(-1.0)
        max_z = max_z.detach()
        v_loss = torch.exp(z - max_z) + torch.exp(-max_z) * w_target_s.detach() * v_values / self._alpha
        v_loss = v_loss.mean()

        # policy loss
        exp_a = torch.exp(z).detach().squeeze(-1)
        log_probs = self._policy_network.get_log_density(o_with_id, a)
        policy_loss = -(exp_a * log_probs).mean()
        return policy_loss, q_loss, v_loss

    def train_step(self, o, s, a, r, mask, s_next, o_next):
        policy_loss, q_loss, v_loss = self.compute_losses(o, s, a, r, mask, s_next, o_next)

        self._policy_optimizer.zero_grad()
        policy_loss.backward()
        nn.utils.clip_grad_norm_(self._policy_network.parameters(), self._grad_norm_clip)
        self._policy_optimizer.step()

        self._q_optimizer.zero_grad()
        q_loss.backward()
        nn.utils.clip_grad_norm_(
            list(self._q_network.parameters()) + list(self._mix_network.parameters()), self._grad_norm_clip)
        self._q_optimizer.step()

        self._v_optimizer.zero_grad()
        v_loss.backward()
        nn.utils.clip_grad_norm_(self._v_network.parameters(), self._grad_norm_clip)
        self._v_optimizer.step()

        for net, target in ((self._q_network, self._q_target_network),
                            (self._v_network, self._v_target_network),
                            (self._mix_network, self._mix_target_network)):
            for param, target_param in zip(net.parameters(), target.parameters()):
                target_param.data.copy_(self._tau * param.data + (1 - self._tau) * target_param.data)
        return policy_loss.item(), q_loss.item(), v_loss.item()


class ReferenceStyleOMIGA(PlainOMIGA):
    """The plain loop with the rest of the reference implementation's habits, same equations.

    ``PlainOMIGA`` evaluates the target networks under ``torch.no_grad()``, which the published
    OMIGA code does not do; this variant follows that code's structure instead (written here,
    not copied): the target networks' forwards are recorded by autograd and detached
    afterwards, the mixer rebuilds the global state from per-agent slices in a Python loop, the
    max-z floor is a ``torch.where`` against a fresh tensor, and every step returns a dict of
    diagnostics (means of the totals, of the mixing weights and of the first two agents' values).
    Its losses and gradients equal PlainOMIGA's (checked in tests/benchmarks).
    """

    def compute_losses(self, o, s, a, r, mask, s_next, o_next):
        n = self._num_agent
        one_hot_agent_id = torch.eye(n).expand(o.shape[0], -1, -1)
        o_with_id = torch.cat((o, one_hot_agent_id), dim=-1)
        o_next_with_id = torch.cat((o_next, one_hot_agent_id), dim=-1)
        s, s_next = s.reshape(s.shape[0], n, -1), s_next.reshape(s.shape[0], n, -1)

        def mix(net, states):  # per-agent state slices concatenated back into the global state
            return net(torch.cat([states[:, j, :] for j in range(n)], dim=-1))

        w_s, b_s = mix(self._mix_network, s)
        q_values = self._q_network(o_with_id, a)
        q_total = (w_s * q_values).sum(dim=-2) + b_s
        v_next_target_values = self._v_target_network(o_next_with_id)
        w_next_target_s, b_next_target_s = mix(self._mix_target_network, s_next)
        v_next_target_total = (w_next_target_s * v_next_target_values).sum(dim=-2) + b_next_target_s
        expected_q_total = r + self._gamma * mask * v_next_target_total.detach()
        q_loss = ((q_total - expected_q_total.detach()) ** 2).mean()

        q_target_values = self._q_target_network(o_with_id, a)
        w_target_s, _ = mix(self._mix_target_network, s)
        v_values = self._v_network(o_with_id)
        z = 1 / self._alpha * (w_target_s.detach() * q_target_values.detach() - w_target_s.detach() * v_values)
        z = torch.clamp(z, min=-10.0, max=10.0)
        exp_a = torch.exp(z).detach().squeeze(-1)
        max_z = torch.max(z)
        max_z = torch.where(max_z < -1.0, torch.tensor(-1.0), max_z).detach()
        v_loss = (torch.exp(z - max_z) + torch.exp(-max_z) * w_target_s.detach() * v_values / self._alpha).mean()

        log_probs = self._policy_network.get_log_density(o_with_id, a)
        policy_loss = -(exp_a * log_probs).mean()
        self.diagnostics = {
            "q_loss": q_loss, "v_loss": v_loss, "policy_loss": policy_loss,
            "expected_q_total": expected_q_total.mean(), "q_total": q_total.mean(), "b": b_s.mean(),
            **{f"w{i + 1}": w_s[:, i, :].mean() for i in range(min(n, 2))},
            **{f"q_values{i + 1}": q_values[:, i, :].mean() for i in range(min(n, 2))},
            **{f"v_values{i + 1}": v_values[:, i, :].mean() for i in range(min(n, 2))},
            **{f"q_target_values{i + 1}": q_target_values[:, i, :].mean() for i in range(min(n, 2))},
        }
        return policy_loss, q_loss, v_loss

    def train_step(self, o, s, a, r, mask, s_next, o_next):
        super().train_step(o, s, a, r, mask, s_next, o_next)
        return self.diagnostics


def plain_inputs(batch):
    """The tensors the plain loop takes, extracted once (its data loading is not timed)."""
    return (
        batch.get(schema.OBS), batch.get(schema.STATE), batch.get(schema.ACTION), batch.get(schema.REWARD),
        1.0 - batch.get(schema.TERMINATED).float(), batch.get(schema.NEXT_STATE), batch.get(schema.NEXT_OBS),
    )


# ---------------------------------------------------------------------------------------------
# Set-up: modules, batches, weight copy and the equivalence check.
# ---------------------------------------------------------------------------------------------
def task_spec(n: int) -> TaskSpec:
    return TaskSpec(n_agents=n, obs_dim=OBS_DIM, state_dim=OBS_DIM * n, discrete=False, action_dim=ACTION_DIM)


def random_transitions(n: int, size: int, generator: torch.Generator) -> TensorDict:
    """Random transitions following the batch contract (actions in [-1, 1], ~5 % terminal)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    terminated = torch.rand(size, 1, generator=generator) < 0.05
    truncated = torch.zeros(size, 1, dtype=torch.bool)
    return TensorDict(
        {
            schema.OBS: randn(size, n, OBS_DIM), schema.NEXT_OBS: randn(size, n, OBS_DIM),
            schema.STATE: randn(size, n * OBS_DIM), schema.NEXT_STATE: randn(size, n * OBS_DIM),
            schema.ACTION: torch.rand(size, n, ACTION_DIM, generator=generator) * 2 - 1,
            schema.REWARD: randn(size, 1),
            schema.TERMINATED: terminated, schema.TRUNCATED: truncated, schema.DONE: terminated | truncated,
            schema.EPISODE: torch.arange(size) // 100,
        },
        [size],
    )


def build_ours(n: int) -> OMIGA:
    return OMIGA.from_spec(task_spec(n), batch_size=BATCH)


def _plain_q_layout(weight: torch.Tensor) -> torch.Tensor:
    """Q's first-layer columns, ours [obs, action, id] -> the plain loop's [obs, id, action]."""
    obs, action, ids = weight[:, :OBS_DIM], weight[:, OBS_DIM:OBS_DIM + ACTION_DIM], weight[:, OBS_DIM + ACTION_DIM:]
    return torch.cat([obs, ids, action], 1)


def linear_pairs(name: str, ours: nn.Linear, theirs: nn.Linear, view=None, rows: slice = slice(None)) -> list:
    """(name, ours, view, plain's) for a layer's weight and bias: ``rows`` of ours (then ``view`` of
    the weight) correspond to plain's tensors."""
    def weight_view(t):
        return t[rows] if view is None else view(t[rows])
    return [(f"{name}.weight", ours.weight, weight_view, theirs.weight),
            (f"{name}.bias", ours.bias, lambda t: t[rows], theirs.bias)]


def actor_pairs(name: str, actor, plain_actor: Actor) -> list:
    """Our ``TanhGaussianActor`` against the plain ``Actor``: our one head layer holds the mean's
    rows [:A] and the log-std's rows [A:] (plain's ``mu_head`` and ``sigma_head``)."""
    first, second, heads = actor.linears
    a = actor.action_dim
    return (linear_pairs(f"{name}.fc1", first, plain_actor.fc1) + linear_pairs(f"{name}.fc2", second, plain_actor.fc2)
            + linear_pairs(f"{name}.mean", heads, plain_actor.mu_head, rows=slice(None, a))
            + linear_pairs(f"{name}.log_std", heads, plain_actor.sigma_head, rows=slice(a, None)))


def parameter_pairs(module: OMIGA, plain: PlainOMIGA) -> list[tuple[str, torch.Tensor, object, torch.Tensor]]:
    """(name, ours, view, plain's) for every online and target parameter: ``view(ours)`` (and
    ``view(ours.grad)``) is what corresponds to plain's tensor. Our actor computes its mean and
    log-std heads as one layer (rows [:A] and [A:]); our Q's first layer orders its inputs [obs,
    action, id], the plain loop's [obs, id, action]."""
    pairs = actor_pairs("actor", module.actor, plain._policy_network)

    def linear(name, ours: nn.Linear, theirs: nn.Linear, view=None):
        pairs.extend(linear_pairs(name, ours, theirs, view))

    for name, ours, theirs, last in (("q", module.q, plain._q_network, "q_value"),
                                     ("q_target", module.q_target, plain._q_target_network, "q_value"),
                                     ("v", module.v, plain._v_network, "state_value"),
                                     ("v_target", module.v_target, plain._v_target_network, "state_value")):
        linear(f"{name}.fc1", ours.linears[0], theirs.fc1, view=_plain_q_layout if name.startswith("q") else None)
        linear(f"{name}.fc2", ours.linears[1], theirs.fc2)
        linear(f"{name}.{last}", ours.linears[2], getattr(theirs, last))
    for name, ours, theirs in (("mixer", module.mixer, plain._mix_network),
                               ("mixer_target", module.mixer_target, plain._mix_target_network)):
        linear(f"{name}.hidden", ours.hidden, theirs.f_v)
        linear(f"{name}.weights", ours.weights, theirs.w_v)
        linear(f"{name}.bias", ours.bias, theirs.b_v)
    covered = {id(ours) for _, ours, _, _ in pairs}
    assert covered == {id(p) for p in module.parameters()}, "every parameter of ours must be paired"
    for name, ours, view, theirs in pairs:
        assert view(ours).shape == theirs.shape, f"{name}: {tuple(view(ours).shape)} vs {tuple(theirs.shape)}"
    return pairs


def build_plain(module: OMIGA, loop: type = PlainOMIGA) -> PlainOMIGA:
    """A plain loop (``PlainOMIGA`` or ``ReferenceStyleOMIGA``) with the same hyper-parameters
    and the same initial weights as ``module``."""
    c, n = module.config, module.spec.n_agents
    assert list(c.hidden) == [c.hidden[0]] * 2, "the plain loop is written for two equal hidden layers"
    plain = loop(OBS_DIM, module.spec.mixer_state_dim, ACTION_DIM, n, hidden=c.hidden[0],
                       mix_hidden=c.mixer_hidden, lr=c.lr, alpha=c.alpha, gamma=c.gamma, tau=c.tau,
                       grad_norm_clip=c.grad_clip)
    with torch.no_grad():
        for _, ours, view, theirs in parameter_pairs(module, plain):
            theirs.copy_(view(ours))
    return plain


def check_equivalence(n: int, tol: float = 1e-5, loop: type = PlainOMIGA) -> tuple[bool, str]:
    """Same initial weights and batch: the same three losses and the same clipped gradients.

    Parameters after one full step (Adam, Polyak) are reported too, not judged: Adam's first
    step is about lr·g/(|g| + 1e-8), so float rounding in near-zero gradients moves it by up to ~lr.
    """
    torch.manual_seed(1234)
    module = build_ours(n)
    plain = build_plain(module, loop)
    batch = random_transitions(n, BATCH, torch.Generator().manual_seed(99))
    inputs = plain_inputs(batch)
    with torch.no_grad():
        ours_losses = module.losses(batch)
        theirs = dict(zip(("policy", "q", "v"), plain.compute_losses(*inputs)))
    loss_diff = max(abs(ours_losses[k].item() - theirs[k].item()) / max(1.0, abs(theirs[k].item())) for k in theirs)
    module.train_step(batch)
    plain.train_step(*inputs)
    grad_diff = param_diff = 0.0
    for _, ours, view, their in parameter_pairs(module, plain):
        param_diff = max(param_diff, (view(ours) - their).abs().max().item())
        if ours.grad is not None:
            grad_diff = max(grad_diff, (view(ours.grad) - their.grad).abs().max().item())
    ok = loss_diff <= tol and grad_diff <= tol
    return ok, (f"losses differ by {loss_diff:.1e} (relative), clipped gradients by {grad_diff:.1e}; "
                f"parameters after one step (targets included) by {param_diff:.1e}")


# ---------------------------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------------------------
def steps_per_second(step, items, seconds: float) -> float:
    """Run ``step`` over ``items`` (cycling) for ``seconds``; steps per second."""
    count, k = 0, len(items)
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        step(items[count % k])
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def count_flops(step, item) -> int:
    with FlopCounterMode(display=False) as counter:
        step(item)
    return counter.get_total_flops()


def matmul_gflops(seconds: float, size: int = 2048, kernel: str = "mm") -> float:
    """Dense float32 matmul GFLOP/s on the current threads: ``torch.mm`` (MKL's sgemm on these
    CPUs) or, with ``kernel="onednn"``, oneDNN's matmul (what ``lightning_marl.nets.linear`` uses;
    on AMD CPUs with AVX-512 about twice MKL's rate)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    c = torch.empty(size, size)
    if kernel == "onednn":
        weight = b.t().contiguous()

        def product():
            torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")
    else:
        def product():
            torch.mm(a, b, out=c)
    for _ in range(2):
        product()
    return 2 * size**3 * calls_per_second(product, seconds, min_calls=3) / 1e9


def measure_peaks(load, seconds: float, peaks: dict) -> None:
    """Append this round's dense float32 matmul rates to ``peaks`` ({"mm": [...], "onednn": [...]})."""
    peaks["mm"].append(load.measure(lambda: matmul_gflops(min(seconds, 1.5))))
    if onednn_matmul_available():
        peaks["onednn"].append(load.measure(lambda: matmul_gflops(min(seconds, 1.5), kernel="onednn")))


def machine_peak(peaks: dict) -> tuple[float | None, bool, str]:
    """The machine's float32 matmul peak: the faster kernel's median (value, clean, description)."""
    mm, mm_clean = median(peaks["mm"])
    onednn, onednn_clean = median(peaks["onednn"]) if peaks["onednn"] else (None, True)
    text = f"torch.mm {fmt(mm, mm_clean, 0)}" + (f", oneDNN {fmt(onednn, onednn_clean, 0)}" if onednn else "")
    if onednn and onednn > (mm or 0):
        return onednn, onednn_clean, text
    return mm, mm_clean, text


class LightningRunner:
    """The same OMIGA through ``lightning.Trainer.fit`` over a small on-disk dataset, grouping
    iterations per Lightning batch as ``fit`` does (``iterations_per_batch``)."""

    def __init__(self, n: int, directory: str, seed: int = 0):
        from lightning_marl.config import RunConfig
        from lightning_marl.data.datamodule import OfflineDataModule
        from lightning_marl.data.dataset import write_dataset
        from lightning_marl.run import quiet_lightning

        quiet_lightning()
        warnings.filterwarnings("ignore", module="lightning")
        td = random_transitions(n, 4096, torch.Generator().manual_seed(seed))
        dataset = write_dataset(os.path.join(directory, f"omiga_{n}"), td, {"spec": task_spec(n), "quality": "random"})
        self.datamodule = OfflineDataModule(dataset, batch_size=BATCH, seed=seed,
                                            iterations_per_batch=RunConfig.iterations_per_batch)
        self.module = build_ours(n)

    def run(self, seconds: float, warmup: int = 20) -> float:
        """Steps/s of one ``trainer.fit``: ``warmup`` batches, then about ``seconds`` timed."""
        clock = _Clock(warmup, seconds)
        self.module.config.steps = self.module.iteration + 10**9  # the clock stops the fit
        trainer = L.Trainer(
            max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
            limit_val_batches=0, callbacks=[clock],
        )
        trainer.fit(self.module, datamodule=self.datamodule)
        return (clock.last_iteration - clock.first_iteration) / (clock.last_time - clock.first_time)


class _Clock(L.Callback):
    """Times from the start of batch ``warmup`` to the end of the last batch; stops after ``seconds``."""

    def __init__(self, warmup: int, seconds: float):
        self.warmup, self.seconds = warmup, seconds
        self.first_time = self.first_iteration = None
        self.last_time = self.last_iteration = None
        self.seen = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.seen == self.warmup:
            self.first_time, self.first_iteration = time.perf_counter(), module.iteration
        self.seen += 1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.last_time, self.last_iteration = time.perf_counter(), module.iteration
        if self.first_time is not None and self.last_time - self.first_time >= self.seconds:
            trainer.should_stop = True


class OtherLoad:
    """How many cores OTHER processes kept busy while a measurement ran (Linux /proc; else 0).

    This machine is shared; with torch's threads on every core, a concurrent process makes the
    threads wait for each other and a step can become 10-100x slower. A measurement during which
    others used more than ``threshold`` cores is retried once the machine is quiet again (waiting
    at most ``patience`` seconds over the whole run), and left out of the medians if it stays disturbed.
    """

    def __init__(self, threshold: float, retries: int, patience: float):
        self.threshold, self.retries, self.wait_left = threshold, retries, patience
        self.available = os.path.exists("/proc/stat") and os.path.exists("/proc/self/stat")
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.discarded = 0

    def _read(self) -> tuple[int, int, float]:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # everything but idle and iowait
        with open("/proc/self/stat") as handle:
            after_name = handle.read().rsplit(")", 1)[1].split()
        own = int(after_name[11]) + int(after_name[12])  # utime + stime of all our threads
        return busy, own, time.perf_counter()

    def _others(self, before, after) -> float:
        return ((after[0] - before[0]) - (after[1] - before[1])) / self.tick / (after[2] - before[2])

    def wait_quiet(self) -> bool:
        """Wait for one second in which others stay under the threshold (within the wait budget)."""
        if not self.available:
            return True
        while self.wait_left > 0:
            before = self._read()
            time.sleep(1.0)
            self.wait_left -= 1.0
            if self._others(before, self._read()) <= self.threshold:
                return True
        return False

    def measure(self, fn) -> tuple[float, bool]:
        """(fn(), undisturbed); retried after a wait while other processes were busy."""
        if not self.available:
            return fn(), True
        for attempt in range(self.retries + 1):
            before = self._read()
            value = fn()
            if self._others(before, self._read()) <= self.threshold:
                return value, True
            self.discarded += 1
            if attempt < self.retries:
                self.wait_quiet()
        return value, False


def median(results: list[tuple[float, bool]]) -> tuple[float | None, bool]:
    """Median of the clean values (clean=True), else of all of them (clean=False)."""
    clean = [value for value, ok in results if ok]
    values = clean or [value for value, _ in results]
    return (statistics.median(values) if values else None), bool(clean)


def per_round_ratios(numerator: list[tuple[float, bool]], denominator: list[tuple[float, bool]]) -> str:
    """``a / b`` within each round (measured back to back, so machine drift cancels), then their
    median: a paired figure beside the table's ratio of medians. Disturbed rounds are starred."""
    pairs = [(a / b, a_ok and b_ok) for (a, a_ok), (b, b_ok) in zip(numerator, denominator) if a and b]
    if not pairs:
        return "—"
    middle, clean = median(pairs)
    return " ".join(fmt(r, ok, 2) for r, ok in pairs) + f" (median {fmt(middle, clean, 2)})"


def per_round_line(label: str, results: dict) -> str:
    """"# <label>, ours / plain per round: ..." (and bf16 / plain where bf16 was measured)."""
    line = f"# {label}, ours / plain per round: {per_round_ratios(results['ours'], results['plain'])}"
    if results.get("bf16"):
        line += f"; bf16 / plain: {per_round_ratios(results['bf16'], results['plain'])}"
    return line


def fmt(value: float | None, clean: bool = True, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}" + ("" if clean else "*")


def parse_measurement_arguments(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Adds the options every throughput benchmark shares (warm-up, profiling, the quiet-machine
    checks), parses, and applies ``--threads`` (which the caller defines)."""
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per variant")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of our step")
    parser.add_argument("--max-other-load", type=float, default=0.1,
                        help="retry a measurement if other processes kept more than this many cores busy")
    parser.add_argument("--retries", type=int, default=2, help="retries of a measurement disturbed by others")
    parser.add_argument("--patience", type=float, default=300.0,
                        help="seconds (whole run) to wait for a quiet machine before rounds and retries")
    parser.add_argument("--tune-malloc", action="store_true",
                        help="apply fit's malloc setting (lightning_marl.malloc) to the whole process, plain loops "
                             "included; default: glibc's own, as a plain script runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tune_malloc:
        from lightning_marl.malloc import tune_malloc

        args.malloc = "tuned as fit tunes it (all loops)" if tune_malloc() else "glibc's defaults (tuning unavailable)"
    else:
        args.malloc = "glibc's defaults"
    return args


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds; more (up to --max-rounds) until every column has this many "
                             "undisturbed measurements; medians of those are reported")
    parser.add_argument("--max-rounds", type=int, default=None, help="default: 2 x --rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--lightning", action="store_true", help="add a lightning.Trainer column")
    parser.add_argument("--bf16", action="store_true",
                        help="add a column: our step under bfloat16 autocast (trainer.precision=bf16-mixed)")
    args = parse_measurement_arguments(parser, argv)
    threads = torch.get_num_threads()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"# OMIGA throughput: torch {torch.__version__}, lightning {L.__version__}, "
          f"threads {threads} (of {os.cpu_count()} CPUs, {cpu}), "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# load average (1 min) at start {os.getloadavg()[0]:.2f}: above ~1 means other processes share the cores")
    print(f"# batch {BATCH}, obs {OBS_DIM}, action {ACTION_DIM} continuous, hidden 256x2, mixer 64; "
          f"{args.seconds:g} s per measurement, medians of {args.rounds} or more undisturbed rounds; malloc: {args.malloc}")

    for n in args.agents:
        for loop in (PlainOMIGA, ReferenceStyleOMIGA):
            ok, detail = check_equivalence(n, loop=loop)
            print(f"# {n} agents: {loop.__name__} matches ours: {'yes' if ok else 'no'} ({detail})")

    torch.manual_seed(0)
    setups = {}
    tmp = tempfile.TemporaryDirectory() if args.lightning else None
    for n in args.agents:
        module = build_ours(n)
        plain, reference = build_plain(module), build_plain(module, ReferenceStyleOMIGA)
        generator = torch.Generator().manual_seed(n)
        pool = [random_transitions(n, BATCH, generator) for _ in range(64)]
        plain_pool = [plain_inputs(b) for b in pool]
        ours_step, plain_step = module.train_step, (lambda x, p=plain: p.train_step(*x))
        reference_step = (lambda x, p=reference: p.train_step(*x))
        for step, items in ((ours_step, pool), (plain_step, plain_pool), (reference_step, plain_pool)):
            steps_per_second(step, items, args.warmup)
        flops, plain_flops = count_flops(ours_step, pool[0]), count_flops(plain_step, plain_pool[0])
        floor = MatmulReplay(record_matmuls(ours_step, pool[1]))
        runner = LightningRunner(n, tmp.name) if args.lightning else None
        if runner is not None:
            runner.run(seconds=0.5)  # warm-up fit
        setups[n] = dict(ours=(ours_step, pool), plain=(plain_step, plain_pool),
                         reference=(reference_step, plain_pool), floor=(lambda _, f=floor: f.run_once(), [None]),
                         flops=flops, plain_flops=plain_flops, runner=runner,
                         results={"ours": [], "plain": [], "reference": [], "floor": [], "lightning": []})
        if args.bf16:
            bf16 = bf16_step(module)
            bf16_floor = MatmulReplay(record_matmuls(bf16, pool[2]))
            setups[n]["bf16"] = (bf16, pool)
            setups[n]["bf16_floor"] = (lambda _, f=bf16_floor: f.run_once(), [None])
            setups[n]["results"].update(bf16=[], bf16_floor=[])
            steps_per_second(bf16, pool, args.warmup)
        print(f"# {n} agents: matmul FLOPs per step (forward+backward): ours {flops / 1e6:.1f} M, "
              f"plain loop {plain_flops / 1e6:.1f} M")
        counts = {name: count_operations(step, items[3]) for name, (step, items) in
                  (("ours", (ours_step, pool)), ("plain loop", (plain_step, plain_pool)),
                   ("reference-style loop", (reference_step, plain_pool)))}
        print(f"# {n} agents: operations dispatched per step (of them, compute: a kernel launch each on an "
              "accelerator): " + ", ".join(f"{name} {total} ({compute})" for name, (total, compute) in counts.items()))

    load = OtherLoad(args.max_other_load, args.retries, args.patience)
    max_rounds = args.max_rounds or 2 * args.rounds
    peaks = {"mm": [], "onednn": []}

    def enough() -> bool:
        cells = [values for values in peaks.values() if values] + [values for s in setups.values() for name, values in s["results"].items()
                           if name != "lightning" or s["runner"] is not None]
        return all(sum(ok for _, ok in values) >= args.rounds for values in cells)

    r = 0
    while r < max_rounds and (r < args.rounds or not enough()):
        load.wait_quiet()
        measure_peaks(load, args.seconds, peaks)
        for n, s in setups.items():
            order = ["ours", "plain", "reference", "floor"] + (["bf16", "bf16_floor"] if "bf16" in s else [])
            order = order if r % 2 == 0 else order[::-1]
            for name in order:
                step, items = s[name]
                s["results"][name].append(load.measure(lambda: steps_per_second(step, items, args.seconds)))
            if s["runner"] is not None:
                s["results"]["lightning"].append(load.measure(lambda: s["runner"].run(args.seconds)))
        r += 1
        print(f"# round {r}: peak {', '.join(f'{k} {fmt(*v[-1], digits=0)}' for k, v in peaks.items() if v)} GFLOP/s; "
              + "; ".join(
            f"{n} agents " + ", ".join(f"{name} {fmt(*values[-1])}" for name, values in s["results"].items() if values)
            for n, s in setups.items()), flush=True)
    if tmp is not None:
        tmp.cleanup()

    peak, peak_clean, peak_text = machine_peak(peaks)
    mm_peak = median(peaks["mm"])[0] or float("nan")
    print(f"# float32 matmul peak (2048x2048, GFLOP/s, medians): {peak_text}; the fraction of peak is of the faster")
    print(f"# load average (1 min) at end {os.getloadavg()[0]:.2f} (this benchmark itself counts ~{threads}); "
          f"{load.discarded} measurement(s) retried because other processes used > {args.max_other_load:g} cores, "
          f"{args.patience - load.wait_left:.0f} s spent waiting for quiet"
          + ("" if load.available else " (not checked: no /proc)"))
    print("# * in a round line: disturbed even after the retries, left out of the medians; * in the table: no "
          "undisturbed measurement in any round, the median of disturbed ones (not to be trusted)")
    for n, s in setups.items():
        print(per_round_line(f"{n} agents", s["results"]))
    print()
    print("| agents | ours steps/s | plain loop | ours / plain | reference-style loop | ours / reference "
          "| matmul floor | floor / plain | ours GFLOP/s | peak GFLOP/s | fraction of peak | of torch.mm's peak "
          "| floor's fraction of peak | lightning steps/s | ours bf16 | bf16 / plain | bf16 / reference "
          "| bf16 matmul floor |")
    print("|---:|" + "---:|" * 17)
    for n, s in setups.items():
        value = {name: median(values) for name, values in s["results"].items()}

        def ratio(a, b):
            (x, x_clean), (y, y_clean) = value[a], value[b]
            return fmt(x / y if x and y else None, x_clean and y_clean, 2)

        ours, ours_clean = value["ours"]
        peak_value = peak if peak else float("nan")
        achieved = s["flops"] * ours / 1e9
        print(f"| {n} | {fmt(*value['ours'])} | {fmt(*value['plain'])} | {ratio('ours', 'plain')} "
              f"| {fmt(*value['reference'])} | {ratio('ours', 'reference')} | {fmt(*value['floor'])} "
              f"| {ratio('floor', 'plain')} | {fmt(achieved, ours_clean)} | {fmt(peak, peak_clean, 0)} "
              f"| {achieved / peak_value:.1%}{'' if ours_clean and peak_clean else '*'} "
              f"| {achieved / mm_peak:.1%} | {s['flops'] * (value['floor'][0] or float('nan')) / 1e9 / peak_value:.1%} "
              f"| {fmt(*value['lightning'])} "
              f"| {fmt(*value.get('bf16', (None, True)))} | {ratio('bf16', 'plain') if 'bf16' in s else '—'} "
              f"| {ratio('bf16', 'reference') if 'bf16' in s else '—'} | {fmt(*value.get('bf16_floor', (None, True)))} |")
    if args.profile:
        for n, s in setups.items():
            profile_step(n, *s["ours"])


def bf16_step(module):
    """Our step with matmuls in bfloat16 and losses in float32 (what trainer.precision=bf16-mixed does)."""

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module.train_step(batch)

    return step


def profile_step(n: int, step, items, steps: int = 100) -> None:
    """torch.profiler's view of ``steps`` of our training step: top ops by own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(items[i % len(items)])
    print(f"\n## where our step's time goes, {n} agents ({steps} steps under the profiler, which slows small ops)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
