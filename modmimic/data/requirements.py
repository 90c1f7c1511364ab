"""What a recipe needs from a dataset (the recipe's top-level ``requires`` list) and the check that refuses a
dataset lacking it, before any network is built.

* ``rewards``  — ``rewards`` and ``dones`` in every demo (offline RL: TD targets);
* ``next_obs`` — ``next_obs/<key>`` for the observation keys (bootstrapping from the next state);
* ``mc_returns`` — Monte-Carlo returns-to-go, computed from the rewards and dones at load time
  (:mod:`modmimic.data.returns`); implied by a batch function that keeps them (``batch.mc_return_key``, Cal-QL).
"""
from __future__ import annotations

from modmimic import keys as K
from modmimic.data.hdf5 import DatasetError


def requirements(cfg) -> list[str]:
    """The recipe's ``requires`` list, plus ``mc_returns`` when its batch function keeps Monte-Carlo returns
    (``batch.mc_return_key``, Cal-QL)."""
    out = list(cfg.get("requires") or [])
    batch = cfg.get("batch") or {}
    if batch.get("mc_return_key") is not None and "mc_returns" not in out:
        out.append("mc_returns")
    return out


def load_rewards_flag(cfg) -> bool | None:
    """``load_episode_store(load_rewards=...)`` for a recipe: True (required, a missing entry is an error naming
    the demo) when the recipe requires rewards, else None (load them when present)."""
    return True if "rewards" in requirements(cfg) else None


def check_requirements(cfg, store) -> None:
    """Raise :class:`DatasetError` naming what the recipe needs and the dataset lacks."""
    name = cfg.get("recipe_name") or cfg.get("algo_name")
    path = getattr(store, "path", "the dataset")
    missing = []
    for req in requirements(cfg):
        if req in ("rewards", "mc_returns") and not (store.has(K.REWARD) and store.has(K.DONE)) and \
                not any(m.startswith("rewards") for m in missing):
            missing.append("rewards and dones (data/<demo>/rewards, data/<demo>/dones)")
        if req == "next_obs":
            have = {k[2] for k in list(store.columns) + list(store.uint8) if k[0] == K.NEXT and k[1] == K.OBS}
            lacking = [k for k in store.obs_keys if k not in have]
            if lacking or not have:
                missing.append(f"next observations (data/<demo>/next_obs/<key>) for {lacking or store.obs_keys}; "
                               "load them with train.hdf5_load_next_obs=true")
    if missing:
        raise DatasetError(f"recipe {name!r} is offline RL and needs {' and '.join(missing)}, which {path} does "
                           "not provide")
