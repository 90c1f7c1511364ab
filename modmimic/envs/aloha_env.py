"""ALOHA sim adapter (env type 2, names ``gym_aloha/AlohaTransferCube-v0``, ``gym_aloha/AlohaInsertion-v0``: LeRobot's
``gym-aloha``, the ACT paper's bimanual ViperX tasks in dm_control/MuJoCo).

The adapter runs gym-aloha's own dm_control tasks (``gym_aloha.tasks.sim``: models, initial object poses, rewards)
without its gymnasium wrapper, which renders three 640 x 480 cameras at every step whatever the observation; here a
camera is rendered only when an observation or a video needs it.

* Actions (14): per arm 6 absolute joint positions and the gripper opening (0 closed, 1 open), left arm first.
* ``reset(seed)``: the objects' initial poses are gym-aloha's ``sample_box_pose(seed)`` /
  ``sample_insertion_pose(seed)`` (as its ``reset(seed=...)``), the arms at ``START_ARM_POSE``.
* Observations: ``agent_pos`` (14: joint positions, grippers normalised: LeRobot's ``observation.state``), ``qvel``
  (14), ``env_state`` (the objects' poses: the cube, 7, or peg and socket, 14; privileged, for state-based policies);
  with camera observations ``<camera>_image`` (uint8 ``[H, W, 3]``; ``env_kwargs`` ``camera_names`` (default
  ``["top"]``, LeRobot's ``observation.images.top``; also ``angle``, ``front_close``, ``left_pillar``,
  ``right_pillar``), ``camera_heights``/``camera_widths`` (default 480 x 640)).
* Reward: gym-aloha's stage, 0..4 (transfer cube: touched, lifted, touched by the other gripper, transferred;
  insertion: both touched, both lifted, peg touches socket, peg touches pin). Success is the top stage, 4 (gym-aloha's
  ``is_success``); :meth:`AlohaEnv.is_success` gives ``{"task": bool, "stage": float, "unstable": float}``, so
  rollouts also report each episode's highest stage (``Max_Stage``; LeRobot's "max reward") and the share of
  episodes whose simulation diverged (``Max_Unstable``, below).
* A step whose simulation diverges (dm_control's ``PhysicsError``, e.g. ``mjWARN_BADQACC`` from a policy's joint
  targets) ends the episode as a failure at the stage reached, with ``info["unstable"]`` and a warning, so one
  unstable episode does not end an evaluation; the observation returned is the last valid one.
* Done after ``max_episode_steps`` (default 400, the ACT paper's episode length at 50 Hz; gym-aloha registers 300).
* State (``get_state``/``reset_to``): dm_control's physics state (time, qpos, qvel) and the actuators' controls, so
  ``reset_to(states[t])`` gives ``obs[t]``; ``ep_meta`` names the task and the seed.
"""
from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np

from modmimic.envs.base import GYM_TYPE, EnvError, SimulatorNotInstalled

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):  # headless: MuJoCo renders through EGL
    os.environ["MUJOCO_GL"] = "egl"
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

NAMESPACE = "gym_aloha"
TASKS = {"AlohaTransferCube-v0": "transfer_cube", "AlohaInsertion-v0": "insertion"}
CAMERAS = ("top", "angle", "front_close", "left_pillar", "right_pillar")
KWARGS = {"max_episode_steps": 400, "camera_names": ["top"], "camera_heights": 480, "camera_widths": 640}
MAX_STAGE = 4


def import_aloha():
    """gym-aloha's task module (``gym_aloha.tasks.sim``) and its constants."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from gym_aloha import constants, utils
            from gym_aloha.tasks import sim
    except ImportError as e:
        raise SimulatorNotInstalled(f"this environment needs gym-aloha and dm-control, which cannot be imported ({e}):"
                                    " pip install 'modmimic[aloha]'") from None
    return sim, constants, utils


def aloha_version() -> str:
    from importlib.metadata import version

    return version("gym-aloha")


def env_meta(task: str, **env_kwargs) -> dict:
    """Env metadata (a dataset's ``env_args``) of ALOHA task ``task`` (``AlohaTransferCube-v0`` or
    ``AlohaInsertion-v0``)."""
    return {"env_name": f"{NAMESPACE}/{task}", "type": GYM_TYPE, "env_version": aloha_version(),
            "env_kwargs": {**copy.deepcopy(KWARGS), **env_kwargs}}


def check_kwargs(name: str, env_kwargs: dict) -> dict:
    kw = {**copy.deepcopy(KWARGS), **copy.deepcopy(env_kwargs or {})}
    unknown = sorted(set(kw) - set(KWARGS))
    if unknown:
        raise EnvError(f"{name}: unknown env_kwargs {unknown} (known: {', '.join(KWARGS)})")
    try:
        for k in ("max_episode_steps", "camera_heights", "camera_widths"):
            kw[k] = int(kw[k])
    except (TypeError, ValueError):
        raise EnvError(f"{name}: env_kwargs max_episode_steps, camera_heights, camera_widths must be integers"
                       ) from None
    if not 1 <= kw["max_episode_steps"] <= 100_000:
        raise EnvError(f"{name}: max_episode_steps must be in [1, 100000], got {kw['max_episode_steps']}")
    kw["camera_names"] = [kw["camera_names"]] if isinstance(kw["camera_names"], str) else list(kw["camera_names"])
    bad = [c for c in kw["camera_names"] if c not in CAMERAS]
    if bad:
        raise EnvError(f"{name}: no camera {bad[0]!r}; cameras: {', '.join(CAMERAS)}")
    return kw


class AlohaEnv:
    type = GYM_TYPE
    success_signal = "reward == 4 (gym-aloha's top stage)"

    def __init__(self, env_meta: dict, render: bool = False, use_image_obs: bool = False):
        name = str(env_meta["env_name"])
        task_id = name.split("/", 1)[1] if name.startswith(NAMESPACE + "/") else None
        if task_id not in TASKS:
            raise EnvError(f"ALOHA env names are {', '.join(f'{NAMESPACE}/{t}' for t in TASKS)}; got {name!r}")
        self.name, self.task = name, TASKS[task_id]
        self._kwargs = check_kwargs(name, env_meta.get("env_kwargs") or {})
        self.cameras = self._kwargs["camera_names"] if use_image_obs else []
        if use_image_obs and not self.cameras:
            raise EnvError(f"{name}: camera observations need env_kwargs camera_names (e.g. ['top'])")
        sim, constants, utils = import_aloha()
        self._sim, self._utils = sim, utils
        from dm_control import mujoco
        from dm_control.rl import control

        xml = constants.ASSETS_DIR / f"bimanual_viperx_{self.task}.xml"
        self.physics = mujoco.Physics.from_xml_path(str(xml))
        self._task = (sim.TransferCubeTask if self.task == "transfer_cube" else sim.InsertionTask)()
        self.n_sub_steps = control.compute_n_steps(constants.DT, self.physics.timestep())
        self.t, self.seed, self._stage, self._unstable = 0, None, 0, False
        self.reset(0)

    @property
    def base_env(self):
        return self.physics

    @property
    def action_dimension(self) -> int:
        return 14

    def _obs(self) -> dict:
        p = self.physics
        obs = {"agent_pos": self._task.get_qpos(p), "qvel": self._task.get_qvel(p),
               "env_state": np.array(self._task.get_env_state(p), dtype=np.float64)}
        for cam in self.cameras:
            obs[f"{cam}_image"] = self.render(self._kwargs["camera_heights"], self._kwargs["camera_widths"], cam)
        return obs

    def initial_object_poses(self, seed: int | None) -> np.ndarray:
        """gym-aloha's object poses for ``seed`` (its ``reset(seed=...)``)."""
        u = self._utils
        if self.task == "transfer_cube":
            return u.sample_box_pose(seed)
        return np.concatenate(u.sample_insertion_pose(seed))

    def reset(self, seed: int | None = None) -> dict:
        self.seed = None if seed is None else int(seed)
        self._sim.BOX_POSE[0] = self.initial_object_poses(self.seed)  # gym-aloha's tasks read it at reset
        with self.physics.reset_context():
            self._task.initialize_episode(self.physics)
        self.t, self._stage, self._unstable = 0, 0, False
        self._last_obs = self._obs()
        return self._last_obs

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != 14:
            raise EnvError(f"{self.name}: action has {a.shape[0]} dims, expected 14 (per arm 6 joints and a gripper)")
        if not np.all(np.isfinite(a)):
            raise EnvError(f"{self.name}: action is not finite")
        if self.t >= self._kwargs["max_episode_steps"]:
            raise EnvError(f"{self.name}: stepped past max_episode_steps={self._kwargs['max_episode_steps']}; "
                           "reset first")
        if self._unstable:
            raise EnvError(f"{self.name}: the simulation became unstable in this episode; reset first")
        from dm_control.rl.control import PhysicsError

        self._task.before_step(a, self.physics)
        try:
            for _ in range(self.n_sub_steps):
                self.physics.step()
        except PhysicsError as e:  # a diverged simulation ends its episode (a failure), not the evaluation
            self._unstable = True
            warnings.warn(f"{self.name}: the simulation became unstable at step {self.t + 1} (dm_control: "
                          f"{str(e).splitlines()[0]}); the episode ends there as a failure", stacklevel=2)
            return self._last_obs, float(self._stage), True, {"is_success": False, "stage": self._stage,
                                                             "unstable": True}
        self._task.after_step(self.physics)
        self.t += 1
        self._stage = int(self._task.get_reward(self.physics))
        done = self.t >= self._kwargs["max_episode_steps"]
        self._last_obs = self._obs()
        return self._last_obs, float(self._stage), done, {"is_success": self._stage == MAX_STAGE, "stage": self._stage}

    def is_success(self) -> dict:
        return {"task": self._stage == MAX_STAGE, "stage": float(self._stage), "unstable": float(self._unstable)}

    def get_state(self, include_model: bool = True) -> dict:
        p = self.physics
        s = np.concatenate([p.get_state(), p.data.ctrl]).astype(np.float64)
        return {"model": None, "states": s, "ep_meta": json.dumps({"task": self.task, "seed": self.seed})}

    def reset_to(self, state: dict) -> dict:
        p = self.physics
        s = np.asarray(state["states"], dtype=np.float64).reshape(-1)
        n_state, n_ctrl = p.get_state().size, p.data.ctrl.size
        if s.size != n_state + n_ctrl or not np.all(np.isfinite(s)):
            raise EnvError(f"{self.name}: a state is {n_state + n_ctrl} finite numbers (dm_control's physics state "
                           f"and {n_ctrl} controls), got {s.size}")
        with p.reset_context():
            p.set_state(s[:n_state])
            p.data.ctrl[:] = s[n_state:]
        self.t, self.seed, self._unstable = 0, None, False
        self._stage = int(self._task.get_reward(p))
        self._last_obs = self._obs()
        return self._last_obs

    def render(self, height: int = 256, width: int = 256, camera_name: str | None = None) -> np.ndarray:
        camera = camera_name or "top"
        if camera not in CAMERAS:
            raise EnvError(f"{self.name}: no camera {camera!r}; cameras: {', '.join(CAMERAS)}")
        return np.ascontiguousarray(self.physics.render(height=height, width=width, camera_id=camera))

    def serialize(self) -> dict:
        return {"env_name": self.name, "type": GYM_TYPE, "env_version": aloha_version(),
                "env_kwargs": copy.deepcopy(self._kwargs)}

    def close(self) -> None:
        self.physics.free()

    def __repr__(self) -> str:
        return f"AlohaEnv({self.task})"
