"""What a recipe needs from a dataset (the recipe's top-level ``requires`` list) and the check that refuses a
dataset lacking it, before any network is built.

* ``rewards``  — ``rewards`` and ``dones`` in every demo (offline RL: TD targets);
* ``next_obs`` — ``next_obs/<key>`` for the observation keys (bootstrapping from the next state).
"""
from __future__ import annotations

from modmimic import keys as K
from modmimic.data.hdf5 import DatasetError


def requirements(cfg) -> list[str]:
    return list(cfg.get("requires") or [])


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
        if req == "rewards" and not (store.has(K.REWARD) and store.has(K.DONE)):
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
