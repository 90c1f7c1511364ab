"""gymnasium adapter (env type 2): ``gymnasium.make(env_name, **env_kwargs)``.

Observations: a ``Dict`` observation space gives one entry per key (nested dicts joined with ``/``), any other space
a single ``flat`` entry (robomimic's ``EnvGym`` key, as in its D4RL conversions). ``env_name`` may carry a module
to import first (``"gymnasium_robotics:PointMaze_UMaze-v3"``, gymnasium's own syntax); that module must be listed in
``MODMIMIC_TRUSTED_MODULES`` (env metadata is read from user files: see :func:`check_env_module`). Success is the step's
``info["is_success"]`` (gymnasium-robotics), else the environment's ``_check_success()``, else never.
``reset_to``/``get_state`` work for MuJoCo environments (flat state ``[qpos, qvel]``).
"""
from __future__ import annotations

import copy

import numpy as np

from modmimic.envs import GYM_TYPE, EnvError, SimulatorNotInstalled


def flatten_obs(obs, prefix: str = "") -> dict:
    if isinstance(obs, dict):
        out = {}
        for k, v in obs.items():
            out.update(flatten_obs(v, f"{prefix}{k}/"))
        return out
    return {prefix[:-1] if prefix else "flat": np.array(obs, copy=True)}


def check_env_module(name: str) -> None:
    """An env name ``module:EnvId`` makes gymnasium import ``module``: env metadata comes from files a user hands in
    (a dataset's ``env_args``, a checkpoint's ``env_metadata``), so the module must be trusted like a stored config's
    names (:mod:`modmimic.trust`: ``MODMIMIC_TRUSTED_MODULES``), else nothing is imported."""
    from modmimic.trust import ENV_VAR, is_trusted, stored_config_modules

    module = name.split(":", 1)[0].strip() if ":" in name else None
    if module is not None and not is_trusted(module, stored_config_modules()):
        raise EnvError(f"env name {name!r} asks gymnasium to import module {module!r}, which is not trusted: env "
                       "metadata comes from a dataset or checkpoint file, and importing a module runs its code. If "
                       f"you trust it, add it to {ENV_VAR} (e.g. {ENV_VAR}={module}); a registered env id without "
                       "a module needs nothing")


class GymnasiumEnv:
    type = GYM_TYPE

    def __init__(self, env_meta: dict, render: bool = False):
        try:
            import gymnasium
        except ImportError:
            raise SimulatorNotInstalled(f"env {env_meta['env_name']!r} is a gym environment and gymnasium is not "
                                        "installed: pip install 'modmimic[sim]'") from None
        self.name = str(env_meta["env_name"])
        check_env_module(self.name)
        kw = copy.deepcopy(env_meta.get("env_kwargs") or {})
        kw.pop("render_mode", None)
        try:
            self.env = gymnasium.make(self.name, render_mode="rgb_array" if render else None, **kw)
        except gymnasium.error.Error as e:
            raise EnvError(f"gymnasium cannot make {self.name!r}: {e}") from None
        except (ImportError, ModuleNotFoundError) as e:
            raise SimulatorNotInstalled(f"gymnasium env {self.name!r} needs a package that is missing: {e}") from None
        except TypeError as e:
            raise EnvError(f"gymnasium.make({self.name!r}, ...) rejected the env_kwargs: {e}") from None
        self._kwargs, self._render = kw, render
        self._success = False
        self._version = gymnasium.__version__
        space = self.env.action_space
        if not hasattr(space, "shape") or space.shape is None or len(space.shape) != 1:
            raise EnvError(f"{self.name}: only flat continuous (Box) action spaces are supported, got {space}")

    @property
    def action_dimension(self) -> int:
        return int(self.env.action_space.shape[0])

    @property
    def base_env(self):
        return self.env.unwrapped

    def reset(self, seed: int | None = None) -> dict:
        obs, _ = self.env.reset(seed=None if seed is None else int(seed))
        self._success = False
        return flatten_obs(obs)

    def _mujoco(self):
        u = self.env.unwrapped
        if not (hasattr(u, "set_state") and hasattr(u, "data") and hasattr(u, "model")):
            raise EnvError(f"{self.name}: reset_to/get_state need a MuJoCo environment (set_state, data, model)")
        return u

    def reset_to(self, state: dict) -> dict:
        u = self._mujoco()
        s = np.asarray(state["states"], dtype=np.float64).reshape(-1)
        nq, nv = u.model.nq, u.model.nv
        if s.shape[0] != nq + nv:
            raise EnvError(f"{self.name}: state has {s.shape[0]} entries, expected nq + nv = {nq + nv}")
        u.set_state(s[:nq], s[nq:])
        self._success = False
        if hasattr(u, "_get_obs"):
            return flatten_obs(u._get_obs())
        raise EnvError(f"{self.name}: cannot read the observation after reset_to (no _get_obs)")

    def get_state(self, include_model: bool = True) -> dict:
        u = self._mujoco()
        return {"model": None, "states": np.concatenate([u.data.qpos.ravel(), u.data.qvel.ravel()]).copy()}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        if "is_success" in info:
            self._success = bool(info["is_success"])
        return flatten_obs(obs), float(reward), bool(terminated or truncated), info

    def is_success(self) -> dict:
        u = self.env.unwrapped
        if hasattr(u, "_check_success"):
            return {"task": bool(u._check_success())}
        return {"task": self._success}

    def render(self, height: int = 256, width: int = 256, camera_name: str | None = None) -> np.ndarray:
        if not self._render:
            raise EnvError(f"{self.name} was created without rendering; create it with render=True")
        img = np.asarray(self.env.render())
        if img.shape[:2] != (height, width):
            ys = np.linspace(0, img.shape[0] - 1, height).astype(int)
            xs = np.linspace(0, img.shape[1] - 1, width).astype(int)
            img = img[ys][:, xs]
        return np.ascontiguousarray(img[..., :3].astype(np.uint8))

    def serialize(self) -> dict:
        return {"env_name": self.name, "type": GYM_TYPE, "env_version": self._version,
                "env_kwargs": copy.deepcopy(self._kwargs)}

    def close(self) -> None:
        self.env.close()

    def __repr__(self) -> str:
        return f"GymnasiumEnv({self.name})"
