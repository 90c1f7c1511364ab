"""Meta-World v3 adapter (env type 2, names ``Meta-World/<task>-v3``, ``Meta-World/MT10``, ``Meta-World/MT50``).

Meta-World ignores ``reset(seed=)``. Its benchmarks fix the goals instead: ``metaworld.MT1(task, seed=s)`` (and
``MT10``/``MT50``) draws 50 goal and object placements per task (``rand_vec``s) from ``np.random.seed(s)``, and its
evaluation resets to those placements. This adapter builds the same benchmark from ``env_kwargs["seed"]`` (the
benchmark seed, default 0) and maps an episode seed onto it, so that any process reproduces a reset from its seed:

* ``goals="benchmark"`` (default): seed ``k`` plays task ``k mod T`` (``T`` tasks: 1, 10 or 50) with its goal
  number ``(k // T) mod 50``, so ``50 T`` consecutive seeds cover every benchmark goal of every task once;
* ``goals="random"``: task ``k mod T`` with a fresh placement drawn by the task's own seeded generator
  (``env.seed(k)``, Meta-World's ``seeded_rand_vec``): goals outside the benchmark's 50, e.g. to generate more varied
  demonstrations.

Observations: ``flat``, Meta-World's 39-d vector (hand position, gripper opening, object poses, the same of the
previous step, goal position: the MT benchmarks' fully observable setting); ``task_id``, a one-hot over the task
set's tasks (MT10/MT50 only, Meta-World's ``use_one_hot``); with camera observations, ``<camera>_image`` (uint8
``[H, W, 3]``, upright; cameras ``corner``, ``corner2``, ``corner3``, ``corner4``, ``topview``, ``behindGripper``,
``gripperPOV``; ``env_kwargs`` ``camera_names``, ``camera_heights``, ``camera_widths``). Actions: 4-d (hand xyz
delta, gripper effort) in [-1, 1]. Success: the step's ``info["success"]``. An episode is done after
``max_episode_steps`` (default 500, Meta-World's ``max_path_length``).

State (``get_state``/``reset_to``): ``[task index, rand_vec, qpos, qvel, mocap_pos, mocap_quat, previous-step
observation (18)]``, so ``reset_to(states[t])`` gives ``obs[t]`` of a recorded episode; ``ep_meta`` (JSON) names
the task, the goal number and the seed.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import warnings

import numpy as np

from modmimic.envs.base import GYM_TYPE, EnvError, SimulatorNotInstalled

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):  # headless: MuJoCo renders through EGL
    os.environ["MUJOCO_GL"] = "egl"
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

NAMESPACE = "Meta-World"
TASK_SETS = ("MT10", "MT50")
GOAL_MODES = ("benchmark", "random")
N_GOALS = 50  # Meta-World's pre-sampled goals per task
PREV_OBS = slice(18, 36)  # the previous step's hand/gripper/object part of the 39-d observation
KWARGS = {"seed": 0, "goals": "benchmark", "max_episode_steps": 500, "camera_names": [], "camera_heights": 84,
          "camera_widths": 84}


def import_metaworld():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import metaworld
    except ImportError as e:
        raise SimulatorNotInstalled(f"this environment needs Meta-World, which cannot be imported ({e}): "
                                    "pip install 'modmimic[metaworld]' && pip install --no-deps metaworld==3.1.1"
                                    ) from None
    return metaworld


def task_names(task: str) -> list[str]:
    """The Meta-World tasks of ``task`` (one task, or a task set's in the benchmark's order)."""
    metaworld = import_metaworld()
    if task in TASK_SETS:
        return list(getattr(metaworld.env_dict, f"{task}_V3"))
    if task not in metaworld.env_dict.ALL_V3_ENVIRONMENTS:
        import difflib

        close = difflib.get_close_matches(task, list(metaworld.env_dict.ALL_V3_ENVIRONMENTS) + list(TASK_SETS), n=1)
        raise EnvError(f"{task!r} is not a Meta-World v3 task or task set" + (f" (did you mean {close[0]!r}?)" if
                       close else "") + f"; task sets: {', '.join(TASK_SETS)}; tasks: e.g. reach-v3, push-v3, "
                       "pick-place-v3 (metaworld.env_dict.ALL_V3_ENVIRONMENTS lists all 50)")
    return [task]


@functools.lru_cache(maxsize=8)
def benchmark_tasks(task: str, seed: int) -> dict:
    """``{task name: [its 50 Meta-World Tasks]}`` of the benchmark ``MT1(task)``/``MT10``/``MT50`` with ``seed``
    (made once per process: MT10 resets each of its tasks 50 times to draw them, ~0.5 s a task)."""
    metaworld = import_metaworld()
    bench = getattr(metaworld, task)(seed=seed) if task in TASK_SETS else metaworld.MT1(task, seed=seed)
    out = {name: [t for t in bench.train_tasks if t.env_name == name] for name in bench.train_classes}
    return out


def env_meta(task: str, **env_kwargs) -> dict:
    """Env metadata (a dataset's ``env_args``) of Meta-World task or task set ``task``."""
    return {"env_name": f"{NAMESPACE}/{task}", "type": GYM_TYPE, "env_version": import_metaworld_version(),
            "env_kwargs": {**copy.deepcopy(KWARGS), **env_kwargs}}


def import_metaworld_version() -> str:
    from importlib.metadata import version

    return version("metaworld")


class MetaWorldEnv:
    type = GYM_TYPE
    success_signal = 'info["success"]'

    def __init__(self, env_meta: dict, render: bool = False, use_image_obs: bool = False):
        name = str(env_meta["env_name"])
        if not name.startswith(NAMESPACE + "/"):
            raise EnvError(f"Meta-World env names are {NAMESPACE}/<task>, got {name!r}")
        self.task = name.split("/", 1)[1]
        kw = {**copy.deepcopy(KWARGS), **copy.deepcopy(env_meta.get("env_kwargs") or {})}
        unknown = sorted(set(kw) - set(KWARGS))
        if unknown:
            raise EnvError(f"{name}: unknown env_kwargs {unknown} (known: {', '.join(KWARGS)})")
        if kw["goals"] not in GOAL_MODES:
            raise EnvError(f"{name}: env_kwargs goals must be one of {', '.join(GOAL_MODES)}, got {kw['goals']!r}")
        try:
            kw["seed"], kw["max_episode_steps"] = int(kw["seed"]), int(kw["max_episode_steps"])
        except (TypeError, ValueError):
            raise EnvError(f"{name}: env_kwargs seed and max_episode_steps must be integers") from None
        if not 1 <= kw["max_episode_steps"] <= 10_000:
            raise EnvError(f"{name}: max_episode_steps must be in [1, 10000], got {kw['max_episode_steps']}")
        kw["camera_names"] = [kw["camera_names"]] if isinstance(kw["camera_names"], str) else list(kw["camera_names"])
        self.name, self._kwargs = name, kw
        self.names = task_names(self.task)
        self.tasks = dict(benchmark_tasks(self.task, kw["seed"]))
        self.cameras = kw["camera_names"] if use_image_obs else []
        if use_image_obs and not self.cameras:
            raise EnvError(f"{name}: camera observations need env_kwargs camera_names (e.g. ['corner'])")
        self._render = render or bool(self.cameras)
        self._envs, self._renderers = {}, {}
        self._rng = np.random.default_rng()
        self.index, self.goal_index, self.seed = 0, None, None
        self._success = False
        self._flat = np.zeros(39)
        self.env = self._env(0)

    # --- Meta-World environments, one per task, made when first needed ---------------------------------------

    def _env(self, index: int):
        if index not in self._envs:
            cls = import_metaworld().env_dict.ALL_V3_ENVIRONMENTS[self.names[index]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                env = cls()
            env.max_path_length = self._kwargs["max_episode_steps"]
            env.set_task(self.tasks[self.names[index]][0])  # fully observable, task data set
            self._envs[index] = env
        return self._envs[index]

    @property
    def base_env(self):
        return self.env

    @property
    def action_dimension(self) -> int:
        return 4

    @property
    def current_task(self) -> str:
        """The task the current episode plays (``reach-v3``, ...): a multi-task policy's task input."""
        return self.names[self.index]

    def _obs(self, flat) -> dict:
        self._flat = np.asarray(flat, dtype=np.float64).copy()
        obs = {"flat": self._flat.copy()}
        if len(self.names) > 1:
            obs["task_id"] = np.eye(len(self.names))[self.index]
        for cam in self.cameras:
            obs[f"{cam}_image"] = self.render(self._kwargs["camera_heights"], self._kwargs["camera_widths"], cam)
        return obs

    def _select(self, index: int, task=None, rand_vec=None, seed: int | None = None):
        """Make task ``index`` current and reset it, with the placement of benchmark ``task`` (set by Meta-World's
        own ``set_task`` from the goal it stored in the task), a stored ``rand_vec`` (``reset_to``), or one drawn
        from ``seed``."""
        self.index = index
        self.env = env = self._env(index)
        env.set_task(task if task is not None else self.tasks[self.names[index]][0])
        if rand_vec is not None:
            env._last_rand_vec = np.asarray(rand_vec, dtype=np.float64).copy()
        elif task is None:  # Meta-World's seeded placement: the task's own generator seeded with the episode seed
            env._freeze_rand_vec, env.seeded_rand_vec = False, True
            env.seed(int(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat, _ = env.reset()
        env._freeze_rand_vec, env.seeded_rand_vec = True, False
        self._success = False
        return flat

    def reset(self, seed: int | None = None) -> dict:
        seed = int(self._rng.integers(2 ** 31)) if seed is None else int(seed)
        n = len(self.names)
        index = seed % n
        self.seed = seed
        if self._kwargs["goals"] == "benchmark":
            self.goal_index = (seed // n) % N_GOALS
            flat = self._select(index, task=self.tasks[self.names[index]][self.goal_index])
        else:
            self.goal_index = None
            flat = self._select(index, seed=seed)
        return self._obs(flat)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if a.shape[0] != 4:
            raise EnvError(f"{self.name}: action has {a.shape[0]} dims, expected 4")
        if self.env.curr_path_length >= self.env.max_path_length:
            raise EnvError(f"{self.name}: stepped past max_episode_steps={self.env.max_path_length}; reset first")
        flat, reward, terminated, truncated, info = self.env.step(a)
        self._success = bool(info.get("success", False))
        return self._obs(flat), float(reward), bool(terminated or truncated), info

    def is_success(self) -> dict:
        return {"task": self._success}

    def get_state(self, include_model: bool = True) -> dict:
        e = self.env
        s = np.concatenate([[float(self.index)], np.asarray(e._last_rand_vec, dtype=np.float64), e.data.qpos,
                            e.data.qvel, e.data.mocap_pos.ravel(), e.data.mocap_quat.ravel(),
                            self._flat[PREV_OBS]])
        meta = json.dumps({"task": self.names[self.index], "goal_index": self.goal_index, "seed": self.seed})
        return {"model": None, "states": s.copy(), "ep_meta": meta}

    def reset_to(self, state: dict) -> dict:
        s = np.asarray(state["states"], dtype=np.float64).reshape(-1)
        index = int(round(s[0])) if s.size else -1
        if not 0 <= index < len(self.names):
            raise EnvError(f"{self.name}: state's task index {s[0] if s.size else None} is not one of its "
                           f"{len(self.names)} tasks")
        e = self._env(index)
        nr, nq, nv, nm = e._random_reset_space.low.size, e.model.nq, e.model.nv, e.model.nmocap
        sizes = [1, nr, nq, nv, 3 * nm, 4 * nm, 18]
        if s.size != sum(sizes):
            raise EnvError(f"{self.name}: state has {s.size} entries, expected {sum(sizes)} for "
                           f"{self.names[index]}")
        _, rand_vec, qpos, qvel, mpos, mquat, prev = np.split(s, np.cumsum(sizes)[:-1])
        self._select(index, rand_vec=rand_vec)
        e.set_state(qpos, qvel)
        e.data.mocap_pos[:] = mpos.reshape(nm, 3)
        e.data.mocap_quat[:] = mquat.reshape(nm, 4)
        import mujoco

        mujoco.mj_forward(e.model, e.data)
        e._prev_obs = prev.copy()
        space = e.sawyer_observation_space
        flat = np.clip(e._get_obs(), space.low, space.high)
        self.goal_index = self.seed = None
        return self._obs(flat)

    def render(self, height: int = 256, width: int = 256, camera_name: str | None = None) -> np.ndarray:
        if not self._render:
            raise EnvError(f"{self.name} was created without rendering; create it with render=True")
        import mujoco

        camera = camera_name or "corner"
        key = (self.index, height, width)
        if key not in self._renderers:
            self._renderers[key] = mujoco.Renderer(self.env.model, height=height, width=width)
        r = self._renderers[key]
        try:
            r.update_scene(self.env.data, camera=camera)
        except (ValueError, KeyError) as e:
            raise EnvError(f"{self.name}: no camera {camera!r} ({e})") from None
        return np.ascontiguousarray(r.render()[::-1, ::-1])  # Meta-World's cameras look at the scene upside down

    def serialize(self) -> dict:
        return {"env_name": self.name, "type": GYM_TYPE, "env_version": import_metaworld_version(),
                "env_kwargs": copy.deepcopy(self._kwargs)}

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        for e in self._envs.values():
            e.close()
        self._envs.clear()

    def __repr__(self) -> str:
        return f"MetaWorldEnv({self.task})"
