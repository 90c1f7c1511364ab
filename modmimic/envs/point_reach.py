"""``PointReach``: the point-reaching task of :func:`modmimic.data.synthetic.make_reach_dataset` as an environment.

A point at ``pos`` moves by ``0.1 * clip(action, -1, 1)`` per step toward ``goal_pos``; success (reward 1) when it
is within 0.05 of the goal. Observations ``pos``, ``goal_pos``, ``vel``; flat state ``[pos, goal_pos, vel]``
(the dataset's ``states``). It needs no simulator, so rollouts, evaluation and parallel evaluation are testable
anywhere.

Fault injection for tests of the parallel evaluator (``env_kwargs``): ``crash_at_step=N`` makes the N-th step of
each episode fail with ``crash_mode`` ``"raise"`` (a Python exception), ``"exit"`` (the process dies, as a
segfaulting simulator would) or ``"hang"`` (never answers).
"""
from __future__ import annotations

import os
import time

import numpy as np

from modmimic.envs.base import GYM_TYPE, EnvError

SUCCESS_RADIUS = 0.05
STEP_SCALE = 0.1


class PointReachEnv:
    type = GYM_TYPE
    success_signal = f"distance to the goal < {SUCCESS_RADIUS}"

    def __init__(self, env_meta: dict):
        kw = dict(env_meta.get("env_kwargs") or {})
        self.name = env_meta["env_name"]
        self.dim = int(kw.pop("dim", 2))
        self.max_len = int(kw.pop("max_len", 40))
        self.crash_at_step = kw.pop("crash_at_step", None)
        self.crash_mode = kw.pop("crash_mode", "raise")
        if kw:
            raise EnvError(f"PointReach: unknown env_kwargs {sorted(kw)} (known: dim, max_len, crash_at_step, "
                           "crash_mode)")
        self._meta = {"env_name": self.name, "type": GYM_TYPE, "env_version": "0",
                      "env_kwargs": {"dim": self.dim, "max_len": self.max_len}}
        self.pos = self.goal = self.vel = None
        self.t = 0

    @property
    def action_dimension(self) -> int:
        return self.dim

    def _obs(self) -> dict:
        return {"pos": self.pos.copy(), "goal_pos": self.goal.copy(), "vel": self.vel.copy()}

    def reset(self, seed: int | None = None) -> dict:
        rng = np.random.default_rng(seed)
        self.pos, self.goal = rng.uniform(-1, 1, self.dim), rng.uniform(-1, 1, self.dim)
        self.vel = np.zeros(self.dim)
        self.t = 0
        return self._obs()

    def reset_to(self, state: dict) -> dict:
        s = np.asarray(state["states"], dtype=np.float64).reshape(-1)
        if s.shape[0] != 3 * self.dim:
            raise EnvError(f"PointReach: state has {s.shape[0]} entries, expected {3 * self.dim}")
        self.pos, self.goal, self.vel = s[:self.dim].copy(), s[self.dim:2 * self.dim].copy(), s[2 * self.dim:].copy()
        self.t = 0
        return self._obs()

    def step(self, action):
        self.t += 1
        if self.crash_at_step is not None and self.t == int(self.crash_at_step):
            if self.crash_mode == "exit":
                os._exit(3)
            if self.crash_mode == "hang":
                time.sleep(3600)
            raise RuntimeError(f"PointReach: injected failure at step {self.t}")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if a.shape[0] != self.dim:
            raise EnvError(f"PointReach: action has {a.shape[0]} dims, expected {self.dim}")
        self.vel = STEP_SCALE * a
        self.pos = self.pos + self.vel
        success = self.is_success()["task"]
        return self._obs(), float(success), False, {}

    def is_success(self) -> dict:
        return {"task": bool(np.linalg.norm(self.pos - self.goal) < SUCCESS_RADIUS)}

    def get_state(self, include_model: bool = True) -> dict:
        return {"model": None, "states": np.concatenate([self.pos, self.goal, self.vel])}

    def render(self, height: int = 256, width: int = 256, camera_name: str | None = None) -> np.ndarray:
        """Top view of the [-1.2, 1.2]^2 square: the goal green, the point red (first two coordinates)."""
        img = np.full((height, width, 3), 255, np.uint8)
        yy, xx = np.mgrid[0:height, 0:width]
        for p, color in ((self.goal, (40, 170, 40)), (self.pos, (210, 40, 40))):
            cx, cy = (p[0] + 1.2) / 2.4 * width, (1.2 - p[1]) / 2.4 * height
            img[(xx - cx) ** 2 + (yy - cy) ** 2 <= (0.04 * width) ** 2] = color
        return img

    def serialize(self) -> dict:
        return dict(self._meta)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"PointReachEnv(dim={self.dim})"


BUILTIN_ENVS = {"PointReach": PointReachEnv}

GYMNASIUM_ID = "modmimic/PointReach-v0"


def make_gymnasium_env(dim: int = 2, max_len: int = 40, render_mode: str | None = None):
    """PointReach as a ``gymnasium.Env`` (a ``Dict`` observation space of ``pos``, ``goal_pos``, ``vel``; actions in
    ``[-1, 1]^dim``; ``terminated`` at success, ``truncated`` after ``max_len`` steps; ``info["is_success"]``), for
    code that expects gymnasium's API, such as torchrl's ``GymEnv``. :func:`register_gymnasium` registers it as
    ``modmimic/PointReach-v0``."""
    import gymnasium as gym

    class PointReachGym(gym.Env):
        metadata = {"render_modes": ["rgb_array"]}

        def __init__(self):
            self.env = PointReachEnv({"env_name": "PointReach", "env_kwargs": {"dim": dim, "max_len": max_len}})
            self.render_mode = render_mode
            box = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float64)
            self.observation_space = gym.spaces.Dict({"pos": box, "goal_pos": box, "vel": box})
            self.action_space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)

        def reset(self, *, seed: int | None = None, options=None):
            super().reset(seed=seed)
            return self.env.reset(seed=int(self.np_random.integers(2**31))), {}

        def step(self, action):
            obs, reward, _, _ = self.env.step(action)
            success = self.env.is_success()["task"]
            return obs, reward, success, not success and self.env.t >= self.env.max_len, {"is_success": success}

        def render(self):
            return self.env.render()

    return PointReachGym()


def register_gymnasium() -> str:
    """Register :func:`make_gymnasium_env` with gymnasium (once) and return its id, ``modmimic/PointReach-v0``."""
    import gymnasium as gym

    if GYMNASIUM_ID not in gym.registry:
        gym.register(id=GYMNASIUM_ID, entry_point=make_gymnasium_env)
    return GYMNASIUM_ID
