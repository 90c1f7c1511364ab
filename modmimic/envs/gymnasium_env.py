"""gymnasium adapter (env type 2): ``gymnasium.make(env_name, **env_kwargs)``.

Observations: a ``Dict`` observation space gives one entry per key (nested dicts joined with ``/``), any other space
a single ``flat`` entry (robomimic's ``EnvGym`` key, as in its D4RL conversions). ``env_name`` may carry a module
to import first (``"gymnasium_robotics:PointMaze_UMaze-v3"``, gymnasium's own syntax); that module must be listed in
``MODMIMIC_TRUSTED_MODULES`` (env metadata is read from user files: see :func:`check_env_module`).

Success, without configuration, is the first of these signals the environment gives: the step's
``info["is_success"]`` (gymnasium-robotics, Stable-Baselines3), ``info["success"]`` (Meta-World, many research
envs), the environment's own ``_check_success()`` (robosuite-style). The env metadata's ``success`` entry names
another signal (``+experiment.env_meta_update_dict.success=<key>`` sets it from a training config):

    "success": "goal_reached"                      # an info key
    "success": {"info_key": "goal_reached"}        # the same
    "success": {"fn": "my_pkg.tasks.solved"}       # a callable fn(env.unwrapped, info) -> bool

The callable's module must be trusted like any name in a stored config (:mod:`modmimic.trust`: modmimic itself or
``MODMIMIC_TRUSTED_MODULES``), since env metadata comes from a dataset or checkpoint file. An environment that gives
none of the signals has :attr:`GymnasiumEnv.success_signal` ``"none"``; rollouts then warn once (success is never
counted). gymnasium's passive env checker is off (its warnings concern env authors, and they would repeat in every
training log); other warnings raised while making, resetting or stepping the environment are shown once, the first
of them with a count of the rest at :meth:`GymnasiumEnv.close`.
``reset_to``/``get_state`` work for MuJoCo environments (flat state ``[qpos, qvel]``).
"""
from __future__ import annotations

import copy
import sys
import warnings

import numpy as np

from modmimic.envs.base import GYM_TYPE, NO_SUCCESS_SIGNAL, EnvError, SimulatorNotInstalled

SUCCESS_INFO_KEYS = ("is_success", "success")  # recognised without configuration, in this order


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


def success_spec(env_meta: dict) -> dict:
    """The env metadata's ``success`` entry as ``{}`` (recognise the common signals), ``{"info_key": str}`` or
    ``{"fn": dotted name}``; clear errors for anything else."""
    spec = env_meta.get("success")
    if spec is None:
        return {}
    if isinstance(spec, str) and spec.strip():
        return {"info_key": spec.strip()}
    if isinstance(spec, dict) and len(spec) == 1:
        (k, v), = spec.items()
        if k in ("info_key", "fn") and isinstance(v, str) and v.strip():
            return {k: v.strip()}
    raise EnvError(f"env metadata 'success' must be an info key (a string), {{'info_key': <key>}} or "
                   f"{{'fn': <module.function>}}, got {spec!r}")


def resolve_success_fn(name: str):
    """The callable named by ``success: {fn: ...}``, resolved only inside trusted modules (env metadata is data)."""
    from modmimic.config import ConfigError
    from modmimic.trust import resolve, stored_config_modules

    try:
        fn = resolve(name, trusted=stored_config_modules())
    except ConfigError as e:
        raise EnvError(f"env metadata 'success': {e}") from None
    if not callable(fn):
        raise EnvError(f"env metadata 'success': {name!r} is not callable")
    return fn


class GymnasiumEnv:
    """``success_signal``: which signal success is read from (``"info['is_success']"``, ``"info['success']"``,
    ``"_check_success()"``, ``"info['<key>']"`` or ``"<module.fn>(env, info)"`` when configured), ``"none"`` when the
    environment gives none, ``None`` before the first step."""
    type = GYM_TYPE

    def __init__(self, env_meta: dict, render: bool = False):
        try:
            import gymnasium
        except ImportError:
            raise SimulatorNotInstalled(f"env {env_meta['env_name']!r} is a gym environment and gymnasium is not "
                                        "installed: pip install 'modmimic[sim]'") from None
        self.name = str(env_meta["env_name"])
        check_env_module(self.name)
        self._spec = success_spec(env_meta)
        self._success_fn = resolve_success_fn(self._spec["fn"]) if "fn" in self._spec else None
        self.success_signal = None
        self._warnings_seen, self._warnings_hidden = set(), 0
        kw = copy.deepcopy(env_meta.get("env_kwargs") or {})
        kw.pop("render_mode", None)
        try:
            self.env = self._quiet(gymnasium.make, self.name, render_mode="rgb_array" if render else None,
                                   **{"disable_env_checker": True, **kw})
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

    def _quiet(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with the warnings it raises shown once: the first distinct one as it comes, the
        number of the others at :meth:`close` (environments tend to warn on every step)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn(*args, **kwargs)
        for w in caught:
            text = f"{w.category.__name__}: {w.message}"
            if text in self._warnings_seen:
                continue
            self._warnings_seen.add(text)
            if len(self._warnings_seen) == 1:
                print(f"modmimic: environment {self.name} warned: {text} (further warnings from it are counted, "
                      "not shown)", file=sys.stderr, flush=True)
            else:
                self._warnings_hidden += 1
        return out

    def reset(self, seed: int | None = None) -> dict:
        obs, _ = self._quiet(self.env.reset, seed=None if seed is None else int(seed))
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
        obs, reward, terminated, truncated, info = self._quiet(self.env.step, np.asarray(action, dtype=np.float32))
        self._success = self._read_success(info)
        return flatten_obs(obs), float(reward), bool(terminated or truncated), info

    def _read_success(self, info: dict) -> bool:
        """Success after a step, from the configured signal or the first common one the environment gives."""
        if "info_key" in self._spec:
            key = self._spec["info_key"]
            if key not in info:
                raise EnvError(f"{self.name}: env metadata 'success' names info key {key!r}, which the step's info "
                               f"does not have (it has {sorted(info)})")
            self.success_signal = f"info[{key!r}]"
            return bool(np.any(info[key]))
        if self._success_fn is not None:
            self.success_signal = f"{self._spec['fn']}(env, info)"
            return bool(self._success_fn(self.env.unwrapped, info))
        for key in SUCCESS_INFO_KEYS:
            if key in info:
                self.success_signal = f"info[{key!r}]"
                return bool(np.any(info[key]))
        if hasattr(self.env.unwrapped, "_check_success"):
            self.success_signal = "_check_success()"
            return bool(self.env.unwrapped._check_success())
        self.success_signal = NO_SUCCESS_SIGNAL
        return False

    def is_success(self) -> dict:
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
        meta = {"env_name": self.name, "type": GYM_TYPE, "env_version": self._version,
                "env_kwargs": copy.deepcopy(self._kwargs)}
        if self._spec:
            meta["success"] = dict(self._spec)
        return meta

    def close(self) -> None:
        if self._warnings_hidden:
            print(f"modmimic: environment {self.name} raised {self._warnings_hidden} other distinct warning"
                  f"{'s' if self._warnings_hidden > 1 else ''} (not shown)", file=sys.stderr, flush=True)
            self._warnings_hidden = 0
        self.env.close()

    def __repr__(self) -> str:
        return f"GymnasiumEnv({self.name})"
