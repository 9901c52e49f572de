"""What behaviour-policy training (PPO and MASAC) saves while it runs, and how it resumes.

In ``out_dir``: ``state.pt`` holds everything resuming needs (networks, optimiser, temperature,
RNG, iteration, index); ``checkpoints/iteration_N.pt`` one evaluated greedy policy every
``checkpoint_every`` iterations (and at iteration 0); ``index.json`` lists them with their
evaluation returns. All three are written atomically, so an interrupted run resumes from its last
checkpoint and a finished one returns its index without training again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from lightning_marl.envs import rollout_returns
from lightning_marl.utils import atomic_torch_save, atomic_write_json


def _state_of(component):
    return component.state_dict() if hasattr(component, "state_dict") else component.detach().clone()


def _restore(component, state) -> None:
    if hasattr(component, "load_state_dict"):
        component.load_state_dict(state)
    else:
        with torch.no_grad():
            component.copy_(state)


class ResumableTraining:
    """The checkpointing loop shared by the behaviour trainers.

    ``components`` maps the names saved in ``state.pt`` to modules, optimisers or tensors (a tensor
    is restored in place); ``policy`` (a ``BehaviourPolicy``, also one of the components) is what the
    evaluated checkpoints hold. Construction resumes from ``out_dir/state.pt`` when it exists.
    ``run`` calls ``one_iteration(iteration, env, td) -> td`` until the budget is spent.

    Example:
        >>> import tempfile
        >>> from lightning_marl.collect.config import TrainConfig
        >>> from lightning_marl.collect.online_training import BehaviourPolicy, task_spec
        >>> from lightning_marl.envs import env_spec, make_env
        >>> def make(n, seed): return make_env("matrix", "climbing", num_envs=n)
        >>> policy = BehaviourPolicy(task_spec(env_spec(make(1, 0))), hidden=(8,))
        >>> cfg = TrainConfig(env_steps=32, num_envs=4, rollout_steps=2, checkpoint_every=2, eval_episodes=2,
        ...                   hidden=[8])
        >>> run = ResumableTraining(tempfile.mkdtemp(), cfg, policy, torch.Generator(), {"policy": policy})
        >>> [entry["iteration"] for entry in run.run(make, 0, 1, lambda i, env, td: td, "demo", progress=False)]
        [0, 2, 4]
    """

    def __init__(self, out_dir, cfg, policy, generator: torch.Generator, components: dict):
        self.out_dir = Path(out_dir)
        (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.cfg, self.policy, self.generator, self.components = cfg, policy, generator, components
        self.per_iteration = cfg.num_envs * cfg.rollout_steps
        self.total = max(1, math.ceil(cfg.env_steps / self.per_iteration))
        self.state_file = self.out_dir / "state.pt"
        self.iteration, self.index = 0, []
        if self.state_file.exists():
            state = torch.load(self.state_file, weights_only=True)
            for name, component in components.items():
                _restore(component, state[name])
            generator.set_state(state["generator"])
            self.iteration, self.index = int(state["iteration"]), list(state["index"])

    def checkpoint(self, eval_env, eval_seed: int) -> None:
        """Evaluate the greedy policy, save it, extend the index and save the resumable state."""
        result = rollout_returns(eval_env, self.policy.env_act(deterministic=True), self.cfg.eval_episodes,
                                 seed=eval_seed)
        file = f"checkpoints/iteration_{self.iteration:06d}.pt"
        atomic_torch_save({"policy": self.policy.state_dict(), "hidden": list(self.cfg.hidden),
                           "centralised": self.policy.centralised, "iteration": self.iteration}, self.out_dir / file)
        self.index.append({"iteration": self.iteration, "env_steps": self.iteration * self.per_iteration,
                           "eval_return": result["mean"], "file": file})
        state = {name: _state_of(component) for name, component in self.components.items()}
        state.update(generator=self.generator.get_state(), iteration=torch.tensor(self.iteration), index=self.index)
        atomic_torch_save(state, self.state_file)
        atomic_write_json(self.out_dir / "index.json", self.index)

    def run(self, make_env_fn, seed: int, eval_seed: int, one_iteration: Callable, description: str,
            progress: bool = True) -> list[dict]:
        """Train until ``total`` iterations (checkpointing on the way); the index up to the budget."""
        if self.iteration >= self.total and self.index:
            return [entry for entry in self.index if entry["iteration"] <= self.total]  # a smaller budget: its part
        eval_env = make_env_fn(min(self.cfg.eval_episodes, 64), eval_seed)
        if not self.index:
            self.checkpoint(eval_env, eval_seed)
        env = make_env_fn(self.cfg.num_envs, seed + 1000 * self.iteration)
        td = env.reset()
        bar = tqdm(total=self.total, initial=self.iteration, desc=description, disable=not progress)
        try:
            while self.iteration < self.total:
                td = one_iteration(self.iteration, env, td)
                self.iteration += 1
                bar.update(1)
                if self.iteration % self.cfg.checkpoint_every == 0 or self.iteration == self.total:
                    self.checkpoint(eval_env, eval_seed)
                    bar.set_postfix(eval_return=f"{self.index[-1]['eval_return']:.3g}")
        finally:
            bar.close()
            env.close()
            eval_env.close()
        return self.index
