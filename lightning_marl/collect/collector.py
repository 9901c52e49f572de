"""Collecting transitions of the batch contract from a batched env and a behaviour policy."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tqdm.auto import tqdm

from lightning_marl.data import schema

_KEEP = (
    schema.OBS, schema.STATE, schema.ACTION_MASK, schema.ACTION,
    schema.NEXT_OBS, schema.NEXT_STATE, schema.NEXT_ACTION_MASK,
    schema.AGENT_REWARD, schema.REWARD, schema.TERMINATED, schema.TRUNCATED, schema.DONE, schema.WON,
)


@torch.no_grad()
def collect_transitions(env, act, episodes: int, spec: dict, seed: int = 0, progress: bool = True,
                        on_reset=None) -> TensorDict:
    """Roll out ``act`` in ``env`` until ``episodes`` episodes finished; transitions [T] in order.

    Continuous actions are stored rescaled from the env's bounds to [-1, 1]. ``episode`` ids are
    consecutive in finishing order. ``on_reset(done_mask)`` is told which envs start a new
    episode (behaviour policies use it to redraw a per-episode quality).
    """
    n_envs = env.batch_size[0]
    env.set_seed(seed)
    td = env.reset()
    if on_reset is not None:
        on_reset(torch.ones(n_envs, dtype=torch.bool))
    episode_of_env = torch.arange(n_envs)
    next_episode = n_envs
    finished = 0
    chunks = []
    if not spec["discrete"]:
        low = torch.tensor(spec["action_low"], dtype=torch.float32)
        high = torch.tensor(spec["action_high"], dtype=torch.float32)
    bar = tqdm(total=episodes, desc="collecting episodes", disable=not progress, leave=False)
    while finished < episodes:
        action = act(td[schema.OBS], td.get(schema.ACTION_MASK, None))
        td[schema.ACTION] = action
        td, next_td = env.step_and_maybe_reset(td)
        step = TensorDict({}, batch_size=[n_envs])
        for key in _KEEP:
            if key in td.keys(include_nested=True):
                step.set(key, td.get(key).cpu().clone())
        if not spec["discrete"]:
            step.set(schema.ACTION, ((step.get(schema.ACTION) - low) / (high - low) * 2 - 1).clamp(-1, 1))
        step.set(schema.EPISODE, episode_of_env.clone())
        chunks.append(step)
        done = td.get(schema.DONE).reshape(n_envs).cpu()
        n_done = int(done.sum())
        if n_done:
            episode_of_env[done] = torch.arange(next_episode, next_episode + n_done)
            next_episode += n_done
            finished += n_done
            bar.update(n_done)
            if on_reset is not None:
                on_reset(done)
        td = next_td
    bar.close()
    # [steps, envs] -> keep only complete episodes, ordered by episode id then time.
    stacked = torch.stack(chunks, dim=1).reshape(-1)
    ids = stacked.get(schema.EPISODE)
    complete_ids = torch.unique(ids[stacked.get(schema.DONE).reshape(-1)])[:episodes]
    keep = torch.isin(ids, complete_ids)
    stacked = stacked[keep]
    order = torch.argsort(stacked.get(schema.EPISODE), stable=True)
    stacked = stacked[order]
    _, dense = torch.unique(stacked.get(schema.EPISODE), return_inverse=True)
    stacked.set(schema.EPISODE, dense)
    return stacked
