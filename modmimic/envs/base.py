"""What every environment adapter shares: the env types of robomimic's metadata, and the errors. Adapters import
this module, never the package's dispatch (:mod:`modmimic.envs`), so the dispatch can import them."""
from __future__ import annotations

ROBOSUITE_TYPE, GYM_TYPE, IG_MOMART_TYPE = 1, 2, 3
TYPE_NAMES = {ROBOSUITE_TYPE: "robosuite", GYM_TYPE: "gym", IG_MOMART_TYPE: "iGibson MOMART"}
# gym env names "<namespace>/<id>" that a benchmark adapter serves (not gymnasium.make): namespace -> module, class
GYM_NAMESPACES = {"Meta-World": ("modmimic.envs.metaworld_env", "MetaWorldEnv"),
                  "gym_pusht": ("modmimic.envs.pusht_env", "PushTEnv"),
                  "gym_aloha": ("modmimic.envs.aloha_env", "AlohaEnv")}
NO_SUCCESS_SIGNAL = "none"  # an adapter's ``success_signal`` when the environment reports no success at all


class EnvError(ValueError):
    """Environment metadata that no adapter can build (unknown type or name, bad kwargs), or a missing simulator."""


class SimulatorNotInstalled(EnvError, ImportError):
    """The simulator a dataset needs is not importable."""
