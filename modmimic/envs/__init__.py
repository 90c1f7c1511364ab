"""Environment adapters: one small protocol over the simulators that robomimic datasets come from.

An environment is created from a dataset's ``env_args`` (robomimic's env metadata,
``{"env_name", "type", "env_version", "env_kwargs"}``) by :func:`env_from_metadata`. ``type`` selects the adapter:

    1  robosuite      :class:`modmimic.envs.robosuite_env.RobosuiteEnv` (robosuite 1.5; old controller dicts converted)
    2  gym            :class:`modmimic.envs.gymnasium_env.GymnasiumEnv`, or a modmimic built-in (``PointReach``), or
                      a benchmark adapter chosen by the env name's namespace (:data:`GYM_NAMESPACES`):
                      ``Meta-World/<task>-v3``, ``Meta-World/MT10``, ``Meta-World/MT50``
                      (:class:`modmimic.envs.metaworld_env.MetaWorldEnv`); ``gym_pusht/PushT-v0``
                      (:class:`modmimic.envs.pusht_env.PushTEnv`); ``gym_aloha/AlohaTransferCube-v0``,
                      ``gym_aloha/AlohaInsertion-v0`` (:class:`modmimic.envs.aloha_env.AlohaEnv`)

Every adapter offers the methods of :class:`Env`. Observations are flat dicts ``{obs key: np.ndarray}`` with
robomimic's key names (robosuite's ``object-state`` is ``object``). Simulators are imported only when an adapter is
created, so ``import modmimic.envs`` works without any simulator installed (``pip install 'modmimic[sim]'``).
"""
from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import numpy as np

from modmimic.envs.base import (GYM_NAMESPACES, GYM_TYPE, IG_MOMART_TYPE, NO_SUCCESS_SIGNAL,  # noqa: F401
                                 ROBOSUITE_TYPE, TYPE_NAMES, EnvError, SimulatorNotInstalled)


@runtime_checkable
class Env(Protocol):
    """What the rollout loop, evaluation and demo generation use of an environment."""

    name: str
    type: int
    action_dimension: int
    success_signal: str | None  # where success is read from (for messages); NO_SUCCESS_SIGNAL: nowhere; None: unknown

    def reset(self, seed: int | None = None) -> dict:
        """Start an episode (its initial state drawn from ``seed`` when given) and return the observation."""

    def reset_to(self, state: dict) -> dict:
        """Restore ``{"model": <model XML or None>, "states": <flat simulator state>}`` and return the observation."""

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        """``(observation, reward, done, info)``."""

    def is_success(self) -> dict:
        """``{"task": bool, ...}`` for the current state."""

    def get_state(self) -> dict:
        """``{"model": str | None, "states": np.ndarray}`` (what :meth:`reset_to` takes)."""

    def render(self, height: int = 256, width: int = 256, camera_name: str | None = None) -> np.ndarray:
        """An RGB image ``[height, width, 3]`` uint8, upright."""

    def serialize(self) -> dict:
        """The env metadata (robomimic ``env_args``) that rebuilds this environment."""

    def close(self) -> None: ...


def check_env_meta(env_meta) -> dict:
    """A copy of ``env_meta`` with its required entries checked (clear errors naming what is wrong)."""
    if not isinstance(env_meta, dict) or not env_meta:
        raise EnvError("the dataset has no env metadata (data.attrs['env_args'] is missing or empty), so there is "
                       "no environment to roll out in")
    for k in ("env_name", "type"):
        if k not in env_meta:
            raise EnvError(f"env metadata has no {k!r} entry: {env_meta!r}")
    meta = copy.deepcopy(env_meta)
    meta.setdefault("env_kwargs", {})
    if not isinstance(meta["env_kwargs"], dict):
        raise EnvError(f"env metadata 'env_kwargs' must be a dict, got {type(meta['env_kwargs']).__name__}")
    return meta


def update_env_meta(env_meta: dict, update: dict | None) -> dict:
    """``env_meta`` with ``experiment.env_meta_update_dict`` applied (robomimic's rule: a dict entry updates the
    dict it replaces one level down, e.g. ``env_kwargs``; anything else replaces). Training rollouts and
    ``modmimic.eval`` use the same result, as robomimic's checkpoints store the updated metadata."""
    meta = copy.deepcopy(dict(env_meta or {}))
    for k, v in (update or {}).items():
        meta[k] = {**meta.get(k, {}), **v} if isinstance(v, dict) and isinstance(meta.get(k), dict) else v
    return meta


def stored_modules():
    """The modules a dataset's or checkpoint's ``env_args`` may name an adapter from (:mod:`modmimic.trust`)."""
    from modmimic.trust import stored_config_modules

    return stored_config_modules()


def env_from_metadata(env_meta: dict, render: bool = False, use_image_obs: bool = False, env_name: str | None = None,
                      use_depth_obs: bool = False, **kwargs) -> Env:
    """Build the environment a dataset (or checkpoint) describes.

    ``render``: offscreen rendering for :meth:`Env.render` (videos); ``use_image_obs``: camera observations
    (``<camera>_image``, uint8 ``[H, W, 3]`` upright, cameras and sizes from ``env_kwargs``); ``use_depth_obs``: also
    ``<camera>_depth`` (float32 metres ``[H, W, 1]``);
    ``env_name`` replaces the dataset's environment name (e.g. evaluate a Lift policy in another task variant);
    other ``kwargs`` update ``env_kwargs``. ``env_args["adapter"]: "mypkg.envs.MyEnv"`` builds a user's adapter
    (a class taking ``(env_meta, render=, use_image_obs=, use_depth_obs=)`` with the :class:`Env` methods) from a
    module trusted with ``MODMIMIC_TRUSTED_MODULES`` (env_args are data: nothing else is imported).
    """
    meta = check_env_meta(env_meta)
    if env_name is not None:
        meta["env_name"] = env_name
    meta["env_kwargs"].update(kwargs)
    t = meta["type"]
    if meta.get("adapter"):  # a user's adapter class, by dotted path (trusted modules only: env_args are data)
        from modmimic.trust import resolve

        try:
            cls = resolve(str(meta["adapter"]), trusted=stored_modules())
        except ValueError as e:
            raise EnvError(f"env_args adapter: {e}") from None
        return cls(meta, render=render, use_image_obs=use_image_obs, use_depth_obs=use_depth_obs)
    if t == ROBOSUITE_TYPE:
        from modmimic.envs.robosuite_env import RobosuiteEnv

        return RobosuiteEnv(meta, render=render, use_image_obs=use_image_obs or use_depth_obs,
                            use_depth_obs=use_depth_obs)
    if t == GYM_TYPE:
        from modmimic.envs.point_reach import BUILTIN_ENVS

        if meta["env_name"] in BUILTIN_ENVS:
            return BUILTIN_ENVS[meta["env_name"]](meta)
        namespace = str(meta["env_name"]).split("/", 1)[0] if "/" in str(meta["env_name"]) else None
        if namespace in GYM_NAMESPACES:
            import importlib

            module, cls = GYM_NAMESPACES[namespace]
            return getattr(importlib.import_module(module), cls)(meta, render=render, use_image_obs=use_image_obs)
        from modmimic.envs.gymnasium_env import GymnasiumEnv

        return GymnasiumEnv(meta, render=render)
    if t == IG_MOMART_TYPE:
        raise EnvError(f"env type 3 ({TYPE_NAMES[3]}, env {meta['env_name']!r}) is not supported by modmimic")
    raise EnvError(f"unknown env type {t!r} for env {meta['env_name']!r} in the env metadata: expected "
                   + ", ".join(f"{k} ({v})" for k, v in TYPE_NAMES.items() if k != IG_MOMART_TYPE))


def camera_obs_flags(obs_keys) -> dict:
    """``{"use_image_obs", "use_depth_obs"}`` for an environment that must produce ``obs_keys``: camera observations
    when a key is a robosuite camera image (``<camera>_image``) or depth map (``<camera>_depth``)."""
    keys = list(obs_keys or [])
    depth = any(str(k).endswith("_depth") for k in keys)
    return {"use_image_obs": depth or any(str(k).endswith("_image") for k in keys), "use_depth_obs": depth}


def with_cameras(env_meta: dict, camera_names, height: int, width: int, depth: bool = False) -> dict:
    """A copy of ``env_meta`` whose ``env_kwargs`` render ``camera_names`` at ``height`` x ``width`` (robomimic's
    ``create_for_data_processing`` settings: camera observations on, offscreen renderer on)."""
    meta = check_env_meta(env_meta)
    names = [camera_names] if isinstance(camera_names, str) else list(camera_names)
    meta["env_kwargs"].update(camera_names=names, camera_heights=int(height), camera_widths=int(width),
                              camera_depths=bool(depth), use_camera_obs=True, has_offscreen_renderer=True)
    return meta
