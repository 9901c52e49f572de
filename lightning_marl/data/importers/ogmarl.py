"""OG-MARL vaults (flashbax ``Vault``, on disk through tensorstore): ``<rel_dir>/<name>/<uid>/``.

The experience is a pytree with leading axes (1, T): observations [1, T, N, O], actions
[1, T, N] (discrete) or [1, T, N, A], rewards [1, T, N], terminals [1, T, N], truncations
[1, T, N], infos.state [1, T, S] and, for discrete tasks, infos.legals [1, T, N, K]. Key names
vary between releases; the aliases below are tried in order. The next step of a row is the next
row; a row that ends its episode (all agents terminal or truncated) has no stored next step and
repeats itself (never bootstrapped when terminated; an approximation when truncated).

Reading needs flashbax and jax (the ``smax`` extra). The uid names the quality (Good, Medium,
Poor, Replay).

Example:
    >>> ALIASES["observations"][:2]
    ('observations', 'observation')
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from lightning_marl.data.importers.common import (
    SMAX_EXTRA,
    TEAM_REWARD_MEAN,
    Imported,
    Importer,
    check_array,
    check_chosen_available,
    check_rows,
    fix_empty_masks,
    make_transitions,
    next_rows_flat,
    rescale_actions,
)
from lightning_marl.data.schema import TaskSpec
from lightning_marl.errors import ConfigError, DatasetError
from lightning_marl.registry import register

ALIASES = {
    "observations": ("observations", "observation", "obs"),
    "actions": ("actions", "action"),
    "rewards": ("rewards", "reward"),
    "terminals": ("terminals", "terminal", "terminated", "dones"),
    "truncations": ("truncations", "truncation", "truncated"),
    "state": ("infos/state", "state", "infos/env_state", "env_state"),
    "legals": ("infos/legals", "legals", "infos/legal_actions", "legal_actions", "infos/avail_actions"),
}


def require_flashbax():
    """flashbax's Vault, or a ConfigError naming the extra that brings it."""
    try:
        from flashbax.vault import Vault
    except ImportError:
        raise ConfigError(f"reading OG-MARL vaults needs flashbax and jax: {SMAX_EXTRA}") from None
    return Vault


def read_vault(src: Path) -> dict:
    """The vault's experience as a flat dict of numpy arrays ('infos/state', ...)."""
    Vault = require_flashbax()
    if not (src / "metadata.json").exists():
        uids = sorted(p.name for p in src.iterdir() if (p / "metadata.json").exists()) if src.is_dir() else []
        if len(uids) != 1:
            raise DatasetError(
                f"{src}: not a vault directory (no metadata.json); expected <rel_dir>/<vault_name>/<vault_uid>"
                + (f". Choose one uid: {', '.join(str(src / u) for u in uids)}" if uids else "")
            )
        src = src / uids[0]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # flashbax prints "Loading vault found at ..."
            state = Vault(vault_name=src.parent.name, vault_uid=src.name, rel_dir=str(src.parent.parent)).read()
        flat = {}

        def walk(node, prefix=""):
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(value, f"{prefix}{key}/")
            else:
                flat[prefix[:-1]] = np.asarray(node)

        walk(state.experience)
    except DatasetError:
        raise
    except Exception as error:  # tensorstore/flashbax errors on corrupt vaults
        raise DatasetError(
            f"{src}: flashbax cannot read this vault ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "it is corrupt or not an OG-MARL vault"
        ) from None
    return flat


def _pick(src, flat: dict, name: str, required: bool = True):
    for alias in ALIASES[name]:
        if alias in flat:
            return alias, flat[alias]
    if required:
        raise DatasetError(
            f"{src}: the vault has no {name!r} (tried {', '.join(ALIASES[name])}); keys found: {sorted(flat)}"
        )
    return None, None


@register("importer", "ogmarl")
class OGMARL(Importer):
    """OG-MARL vaults read through flashbax (observations, actions, rewards, terminals, truncations, infos).

    Example:
        >>> sorted(OGMARL.options)
        ['action_bounds']
    """

    name = "ogmarl"
    options = {"action_bounds": "(low, high) of the environment's actions, to rescale them to [-1, 1]"}

    def read(self, src: Path, action_bounds=None) -> Imported:
        flat = read_vault(src)
        arrays = {}
        for name in ("observations", "actions", "rewards", "terminals", "truncations", "state", "legals"):
            key, value = _pick(src, flat, name, required=name not in ("legals", "truncations"))
            if key is None:
                continue
            if value.ndim < 2 or value.shape[0] != 1:
                raise DatasetError(f"{src}: {key!r} has shape {list(value.shape)}, expected leading axes [1, T, ...]")
            arrays[name] = (key, value[0])
        key, obs = arrays["observations"]
        obs = check_array(obs, src, key, shape=(None, None, None))
        rows, n = obs.shape[:2]
        if rows == 0:
            raise DatasetError(f"{src}: the vault holds no timesteps")
        state = check_array(arrays["state"][1], src, arrays["state"][0], shape=(rows, None))
        agent_reward = check_array(arrays["rewards"][1], src, arrays["rewards"][0], shape=(rows, n))
        terminals = check_array(arrays["terminals"][1], src, arrays["terminals"][0], shape=(rows, n), kind="bool")
        if "truncations" in arrays:
            truncations = check_array(arrays["truncations"][1], src, arrays["truncations"][0], shape=(rows, n), kind="bool")
        else:
            truncations = np.zeros((rows, n), bool)
        akey, action = arrays["actions"]
        discrete = "legals" in arrays
        if discrete:
            action = check_array(action, src, akey, shape=(rows, n), kind="int").astype(np.int64)
            lkey, legals = arrays["legals"]
            legals = check_array(legals, src, lkey, shape=(rows, n, None), kind="bool")
            check_chosen_available(src, action, legals, akey, lkey)
        else:
            action = check_array(action, src, akey, shape=(rows, n, None))
            action, low, high = rescale_actions(action, src, akey, action_bounds)
        check_rows(src, {"observations": obs, "state": state})
        nxt, terminated, truncated = next_rows_flat(terminals.all(1), truncations.all(1) | terminals.all(1))
        ends = terminated | truncated
        episode = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)
        extra = {}
        if discrete:
            next_mask, patched = fix_empty_masks(legals[nxt])
            extra = {"action_mask": legals, "next_action_mask": next_mask}
        td = make_transitions(src, obs=obs, next_obs=obs[nxt], state=state, next_state=state[nxt], action=action,
                              reward=agent_reward.mean(1), agent_reward=agent_reward, terminated=terminated,
                              truncated=truncated, episode=episode, **extra)
        if discrete:
            spec = TaskSpec(n_agents=n, obs_dim=obs.shape[2], state_dim=state.shape[1], discrete=True,
                            n_actions=legals.shape[2])
        else:
            spec = TaskSpec(n_agents=n, obs_dim=obs.shape[2], state_dim=state.shape[1], discrete=False,
                            action_dim=action.shape[2], action_low=low, action_high=high)
        uid_dir = src if (src / "metadata.json").exists() else next(p for p in src.iterdir() if (p / "metadata.json").exists())
        return Imported(td, spec, {
            "env": {"name": None, "task": uid_dir.parent.name, "params": {}}, "quality": uid_dir.name,
            "team_reward_rule": TEAM_REWARD_MEAN,
            "source": {"format": "ogmarl", "path": str(uid_dir), "keys": {k: v[0] for k, v in arrays.items()}},
            "notes": ["episodes end where all agents are terminal or truncated; such a row repeats itself as its "
                      "next step (the vault does not store the final observation)"],
        })
