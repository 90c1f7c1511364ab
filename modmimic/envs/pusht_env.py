"""PushT adapter (env type 2, name ``gym_pusht/PushT-v0``: LeRobot's ``gym-pusht``, the Diffusion Policy task).

A circular pusher (radius 15) pushes a T-shaped block on a 512 x 512 px table, without friction or inertia (pymunk
with full damping: the block moves only while pushed), until the T covers a fixed goal T (at (256, 256), angle pi/4).
Actions: 2-d, the pusher's target position in px (``[0, 512]``), tracked by a PD controller at 10 Hz.

Success is gym-pusht's own: coverage (the area of the block inside the goal T over the goal's area) above the
environment's ``success_threshold`` (0.95, a strict ``>``, as ``info["is_success"]``); the coverage itself is a
metric: :meth:`PushTEnv.is_success` gives ``{"task": bool, "coverage": float}`` and rollouts report each episode's
maximum (``Max_Coverage``, LeRobot's "max overlap"). gym-pusht ends an episode at success; it is also done after
``max_episode_steps`` (default 300, gym-pusht's registration).

Observations (``reset(seed)`` draws the initial state with gym-pusht's own generator, so seed ``k`` gives gym-pusht's
``reset(seed=k)``): ``state`` (5: pusher xy, block xy, block angle in ``[0, 2 pi)``: gym-pusht's ``obs_type="state"``),
``agent_pos`` (2), ``keypoints`` (16: the T's 8 corners, LeRobot's ``environment_state``); with camera observations
``top_image`` (uint8 ``[H, W, 3]``, gym-pusht's rendering, default 96 x 96 as its ``pixels`` observation;
``env_kwargs`` ``camera_heights``/``camera_widths``; ``camera_names`` must be ``["top"]``).

State (``get_state``/``reset_to``): ``[pusher xy, pusher velocity, block xy, block angle, block velocity, block
angular velocity, last action xy]`` (12), set directly (gym-pusht's ``reset_to_state`` runs a physics step first), so
``reset_to(states[t])`` gives ``obs[t]`` of a recorded episode.
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np

from modmimic.envs.base import GYM_TYPE, EnvError, SimulatorNotInstalled

NAMESPACE = "gym_pusht"
ENV_NAME = "gym_pusht/PushT-v0"
CAMERA = "top"
KWARGS = {"max_episode_steps": 300, "camera_names": [], "camera_heights": 96, "camera_widths": 96,
          "block_cog": None, "damping": None}
STATE_SIZE = 12


def import_pusht():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import os

            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
            from gym_pusht.envs.pusht import PushTEnv as Raw
    except ImportError as e:
        raise SimulatorNotInstalled(f"this environment needs gym-pusht, which cannot be imported ({e}): "
                                    "pip install 'modmimic[pusht]'") from None
    return Raw


def pusht_version() -> str:
    from importlib.metadata import version

    return version("gym-pusht")


def env_meta(**env_kwargs) -> dict:
    """Env metadata (a dataset's ``env_args``) of PushT."""
    return {"env_name": ENV_NAME, "type": GYM_TYPE, "env_version": pusht_version(),
            "env_kwargs": {**copy.deepcopy(KWARGS), **env_kwargs}}


class PushTEnv:
    type = GYM_TYPE
    success_signal = 'info["coverage"] > success_threshold'

    def __init__(self, env_meta: dict, render: bool = False, use_image_obs: bool = False):
        name = str(env_meta["env_name"])
        if name != ENV_NAME:
            raise EnvError(f"the PushT environment is {ENV_NAME}, got {name!r}")
        kw = {**copy.deepcopy(KWARGS), **copy.deepcopy(env_meta.get("env_kwargs") or {})}
        unknown = sorted(set(kw) - set(KWARGS))
        if unknown:
            raise EnvError(f"{name}: unknown env_kwargs {unknown} (known: {', '.join(KWARGS)})")
        try:
            kw["max_episode_steps"] = int(kw["max_episode_steps"])
            kw["camera_heights"], kw["camera_widths"] = int(kw["camera_heights"]), int(kw["camera_widths"])
        except (TypeError, ValueError):
            raise EnvError(f"{name}: env_kwargs max_episode_steps, camera_heights, camera_widths must be integers"
                           ) from None
        if not 1 <= kw["max_episode_steps"] <= 100_000:
            raise EnvError(f"{name}: max_episode_steps must be in [1, 100000], got {kw['max_episode_steps']}")
        kw["camera_names"] = [kw["camera_names"]] if isinstance(kw["camera_names"], str) else list(kw["camera_names"])
        if any(c != CAMERA for c in kw["camera_names"]):
            raise EnvError(f"{name}: PushT has one camera, {CAMERA!r}; got camera_names {kw['camera_names']}")
        if use_image_obs and not kw["camera_names"]:
            kw["camera_names"] = [CAMERA]
        self.name, self._kwargs = name, kw
        self.cameras = kw["camera_names"] if use_image_obs else []
        Raw = import_pusht()
        self.env = Raw(obs_type="state", render_mode="rgb_array", block_cog=kw["block_cog"], damping=kw["damping"],
                       observation_width=kw["camera_widths"], observation_height=kw["camera_heights"])
        self.threshold = float(self.env.success_threshold)
        self.t, self.seed, self._success, self._coverage = 0, None, False, 0.0
        self.reset(0)

    @property
    def base_env(self):
        return self.env

    @property
    def action_dimension(self) -> int:
        return 2

    def _obs(self) -> dict:
        e = self.env
        obs = {"state": e.get_obs().astype(np.float64), "agent_pos": np.array(e.agent.position, dtype=np.float64),
               "keypoints": e.get_keypoints(e._block_shapes).reshape(-1).astype(np.float64)}
        for cam in self.cameras:
            obs[f"{cam}_image"] = np.ascontiguousarray(e._render(visualize=False))
        return obs

    def reset(self, seed: int | None = None) -> dict:
        self.seed = None if seed is None else int(seed)
        self.env.reset(seed=self.seed)
        self.env._last_action = None
        self.t, self._success = 0, False
        self._coverage = float(self.env._get_coverage())
        return self._obs()

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != 2:
            raise EnvError(f"{self.name}: action has {a.shape[0]} dims, expected 2 (the pusher's target x, y)")
        if not np.all(np.isfinite(a)):
            raise EnvError(f"{self.name}: action {a.tolist()} is not finite")
        if self.t >= self._kwargs["max_episode_steps"]:
            raise EnvError(f"{self.name}: stepped past max_episode_steps={self._kwargs['max_episode_steps']}; "
                           "reset first")
        _, reward, terminated, _, info = self.env.step(a)
        self.t += 1
        self._coverage = float(info["coverage"])
        self._success = bool(info["is_success"])
        done = bool(terminated) or self.t >= self._kwargs["max_episode_steps"]
        return self._obs(), float(reward), done, info

    def is_success(self) -> dict:
        return {"task": self._success, "coverage": self._coverage}

    def get_state(self, include_model: bool = True) -> dict:
        e = self.env
        last = e._last_action if e._last_action is not None else [np.nan, np.nan]
        s = np.concatenate([e.agent.position, e.agent.velocity, e.block.position, [e.block.angle],
                            e.block.velocity, [e.block.angular_velocity], np.asarray(last, dtype=np.float64)])
        return {"model": None, "states": s.astype(np.float64), "ep_meta": json.dumps({"seed": self.seed})}

    def reset_to(self, state: dict) -> dict:
        s = np.asarray(state["states"], dtype=np.float64).reshape(-1)
        if s.size != STATE_SIZE or not np.all(np.isfinite(s[:10])):
            raise EnvError(f"{self.name}: a state is {STATE_SIZE} finite numbers (pusher xy and velocity, block xy, "
                           f"angle, velocity, angular velocity, last action), got {s.size}")
        e = self.env
        e.reset(seed=0)  # a fresh pymunk space (no contact history), then the state
        e.agent.position, e.agent.velocity = s[0:2].tolist(), s[2:4].tolist()
        e.block.angle = float(s[6])  # first: pymunk turns a body about its centre of gravity, moving its origin
        e.block.position = s[4:6].tolist()
        e.block.velocity, e.block.angular_velocity = s[7:9].tolist(), float(s[9])
        e.space.reindex_shapes_for_body(e.block)
        e.space.reindex_shapes_for_body(e.agent)
        e._last_action = None if np.isnan(s[10:]).any() else s[10:].copy()
        self.t, self.seed = 0, None
        self._coverage = float(e._get_coverage())
        self._success = self._coverage > self.threshold
        return self._obs()

    def render(self, height: int = 256, width: int = 256, camera_name: str | None = None) -> np.ndarray:
        if camera_name not in (None, CAMERA):
            raise EnvError(f"{self.name}: no camera {camera_name!r} (PushT has {CAMERA!r})")
        screen = self.env._draw()
        marker = min(height, width) >= 96  # gym-pusht's action marker is 0 px thick below that
        return np.ascontiguousarray(self.env._get_img(screen, width=width, height=height, render_action=marker))

    def serialize(self) -> dict:
        return {"env_name": self.name, "type": GYM_TYPE, "env_version": pusht_version(),
                "env_kwargs": copy.deepcopy(self._kwargs)}

    def close(self) -> None:
        self.env.close()

    def __repr__(self) -> str:
        return "PushTEnv(PushT-v0)"
