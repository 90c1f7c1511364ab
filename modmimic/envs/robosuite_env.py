"""robosuite 1.5 adapter (env type 1), built from a dataset's ``env_args``.

* ``env_kwargs`` are ``robosuite.make`` arguments. As robomimic does, the adapter decides rendering and observation
  flags itself (``has_renderer=False``, offscreen rendering only when asked, ``ignore_done=True``,
  ``use_object_obs=True``, camera observations only for image policies).
* Controller configs in the format of robosuite <= 1.4 (robomimic's released datasets: ``{"type": "OSC_POSE",
  ...}``) are converted to 1.5's composite format; 1.5 refuses them otherwise.
* Observations use robomimic's names: ``object-state`` is ``object``; every other robosuite key is kept; camera
  images are flipped upright.
* robosuite 1.5 caches observables: right after a reset some derived keys (e.g. Can's ``Can_to_robot0_eef_pos``)
  are still zeros or stale, and the observation ``env.step`` returns is sampled one physics substep before the end
  of the control step (floating-point accumulation of the sampling clock), with site positions of the substep
  before that (``mj_step`` leaves them stale); sensors computed from other sensors' cached values (object-to-eef
  poses) read those of the previous pass. The adapter runs ``mj_forward`` after a step and force-updates every
  observation, the low-dim ones twice, so an observation is always a function of the current simulator state:
  ``reset_to(states[t])`` reproduces ``obs[t]`` of a recorded episode exactly, as in robomimic's datasets
  (extracted from states).
* ``reset(seed)`` reseeds the environment's own random generator (object placement, robot joint noise), so the
  same seed gives the same initial state in any process.
"""
from __future__ import annotations

import copy
import difflib
import os
import warnings

import numpy as np

from modmimic.envs.base import ROBOSUITE_TYPE, EnvError, SimulatorNotInstalled

# robosuite and MuJoCo pick the OpenGL backend when they are imported; headless machines need EGL (or OSMesa).
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

SINGLE_ARM_ROBOTS = {"Panda", "Sawyer", "IIWA", "Jaco", "Kinova3", "UR5e"}
MUJOCO_WORKS_BELOW = (3, 9)  # robosuite 1.5.2 fails with mujoco >= 3.9 (and 4.x)


def import_robosuite():
    """``robosuite`` after checking the installed stack; clear errors when it is missing or broken."""
    try:
        import mujoco
    except ImportError:
        raise SimulatorNotInstalled("this dataset's environment needs robosuite, and MuJoCo is not installed: "
                                    "pip install 'modmimic[sim]' (robosuite 1.5.2 with mujoco 3.3.7)") from None
    ver = tuple(int(p) for p in mujoco.__version__.split(".")[:2])
    if ver >= MUJOCO_WORKS_BELOW:
        raise EnvError(f"mujoco {mujoco.__version__} is installed, but robosuite 1.5.2 breaks with mujoco >= 3.9; "
                       "pip install 'mujoco==3.3.7' (or reinstall 'modmimic[sim]')")
    import logging

    # robosuite logs warnings on import that do not concern modmimic's tasks (no private macro file, no
    # robosuite_models, no mink IK for GR1): silence logging up to WARNING while it is imported
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import robosuite
            except ImportError as e:
                raise SimulatorNotInstalled(f"this dataset's environment needs robosuite, which cannot be imported "
                                            f"({e}): pip install 'modmimic[sim]'") from None
    finally:
        logging.disable(previous)
    if not robosuite.__version__.startswith("1.5"):
        raise EnvError(f"robosuite {robosuite.__version__} is installed; modmimic's adapter needs robosuite 1.5 "
                       "(pip install 'robosuite==1.5.2')")
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    return robosuite


def robot_names(env_kwargs: dict) -> list[str]:
    robots = env_kwargs.get("robots", "Panda")
    return [robots] if isinstance(robots, str) else list(robots)


def convert_controller_config(config: dict | None, robot: str) -> dict | None:
    """robosuite <= 1.4 part config (``{"type": "OSC_POSE", ...}``) -> 1.5 composite config; 1.5 configs pass
    through. Single-arm robots keep only their ``right`` body part (the generic default also lists head, base and
    legs, which robosuite warns about on every reset)."""
    if config is None:
        return None
    from robosuite.controllers.composite.composite_controller_factory import (
        is_part_controller_config, refactor_composite_controller_config)

    config = copy.deepcopy(config)
    if is_part_controller_config(config):
        arms = ["right"] if robot in SINGLE_ARM_ROBOTS else ["right", "left"]
        config = refactor_composite_controller_config(config, robot, arms)
    parts = config.get("body_parts")
    if robot in SINGLE_ARM_ROBOTS and isinstance(parts, dict) and "right" in parts:
        config["body_parts"] = {"right": parts["right"]}
    return config


def default_controller_config(robot: str = "Panda") -> dict:
    """robosuite 1.5's default composite controller for ``robot`` (arm: OSC_POSE, the controller robomimic used)."""
    import_robosuite()
    from robosuite.controllers import load_composite_controller_config

    return convert_controller_config(load_composite_controller_config(controller="BASIC", robot=robot), robot)


class RobosuiteEnv:
    """A robosuite task with modmimic's environment protocol (see :mod:`modmimic.envs`)."""

    type = ROBOSUITE_TYPE
    success_signal = "_check_success()"

    def __init__(self, env_meta: dict, render: bool = False, use_image_obs: bool = False, use_depth_obs: bool = False):
        suite = import_robosuite()
        self.name = str(env_meta["env_name"])
        if self.name not in suite.ALL_ENVIRONMENTS:
            close = difflib.get_close_matches(self.name, sorted(suite.ALL_ENVIRONMENTS), n=1)
            raise EnvError(f"robosuite has no environment {self.name!r}"
                           + (f" (did you mean {close[0]!r}?)" if close else "")
                           + f"; robomimic's Can is 'PickPlaceCan', Square is 'NutAssemblySquare'")
        version = env_meta.get("env_version")
        if version and str(version).split(".")[:2] != suite.__version__.split(".")[:2]:
            warnings.warn(f"the dataset was recorded with robosuite {version}; robosuite {suite.__version__} is "
                          "installed (dynamics and observations may differ slightly)", stacklevel=2)
        kw = copy.deepcopy(env_meta.get("env_kwargs") or {})
        for k in ("env_lang", "lang", "env_name"):
            kw.pop(k, None)
        robots = robot_names(kw)
        if "controller_configs" in kw:
            kw["controller_configs"] = convert_controller_config(kw["controller_configs"], robots[0])
        else:
            kw["controller_configs"] = default_controller_config(robots[0])
        # Video rendering must not change the episodes: the environment is made exactly as without ``render`` (robosuite
        # builds an offscreen renderer only for camera observations) and :meth:`render` attaches a render context to
        # the current simulator when it is first asked for a frame. (Setting ``hard_reset=False`` to keep one GL context
        # would change every episode: a hard reset redraws the object sizes from the environment's generator.)
        offscreen = bool(use_image_obs)
        self._meta_kwargs = copy.deepcopy(kw)
        kw.update(has_renderer=False, has_offscreen_renderer=offscreen, ignore_done=True, use_object_obs=True,
                  use_camera_obs=bool(use_image_obs))
        kw["camera_depths"] = bool(use_image_obs and use_depth_obs)
        try:
            self.env = suite.make(self.name, **kw)
        except TypeError as e:
            raise EnvError(f"robosuite.make({self.name!r}, ...) rejected the dataset's env_kwargs: {e}") from None
        self.render_enabled = bool(render or use_image_obs)
        self._kwargs = kw
        self._version = suite.__version__

    # --- protocol ----------------------------------------------------------------------------------------------
    @property
    def action_dimension(self) -> int:
        return int(self.env.action_dim)

    @property
    def base_env(self):
        return self.env

    @staticmethod
    def _convert(raw: dict) -> dict:
        """robosuite's observation dict -> modmimic's (robomimic names, upright images, own arrays).

        The one place where camera observations are flipped: robosuite renders OpenGL-style, bottom row first;
        ``<camera>_image`` (uint8 ``[H, W, 3]``) and ``<camera>_depth`` (``[H, W, 1]``) are returned top row first,
        as robomimic's datasets store them. Rollouts, ``states_to_obs`` and demo generation all observe through this,
        so the image a policy sees equals the dataset image of the same simulator state, pixel for pixel."""
        out = {}
        for k, v in raw.items():
            if k == "object-state":
                k = "object"
            v = np.asarray(v)
            out[k] = (v[::-1] if k.endswith(("_image", "_depth")) else v).copy()
        return out

    def _refresh_low_dim(self) -> None:
        """robosuite computes the observables in order, each sensor reading the others' values from a cache: Square's
        ``SquareNut_to_robot0_eef_pos`` (and Can's ``Can_to_robot0_eef_pos``) comes before ``SquareNut_pos`` and
        would read the pose of the previous pass (after ``reset_to``, another state's). A forced pass over the
        non-camera observables first makes every key of the next pass a function of the current state."""
        cache = self.env._obs_cache
        for observable in self.env._observables.values():
            if observable.modality != "image" and observable.is_enabled():
                observable.update(0.0, cache, force=True)

    def _obs(self) -> dict:
        self._refresh_low_dim()
        out = self._convert(self.env._get_observations(force_update=True))
        for k in out:
            if k.endswith("_depth"):
                out[k] = self._metric_depth(out[k])
        return out

    def _metric_depth(self, z) -> np.ndarray:
        """robosuite's depth buffer values in [0, 1] -> distance in metres (float32), as robomimic's datasets."""
        m = self.env.sim.model
        extent = float(m.stat.extent)
        near, far = float(m.vis.map.znear) * extent, float(m.vis.map.zfar) * extent
        return (near / (1.0 - np.asarray(z, np.float64) * (1.0 - near / far))).astype(np.float32)

    def reset(self, seed: int | None = None) -> dict:
        if seed is not None:  # in place: the placement samplers hold a reference to this generator
            self.env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        self.env.reset()
        return self._obs()

    def reset_to(self, state: dict) -> dict:
        model = state.get("model")
        if model is not None:
            if isinstance(model, bytes):
                model = model.decode()
            self.env.reset_from_xml_string(self.env.edit_model_xml(model))
            self.env.sim.reset()
        ep_meta = state.get("ep_meta")
        if ep_meta and hasattr(self.env, "set_ep_meta"):
            import json

            self.env.set_ep_meta(json.loads(ep_meta) if isinstance(ep_meta, str) else ep_meta)
        if state.get("states") is not None:
            self.env.sim.set_state_from_flattened(np.asarray(state["states"], dtype=np.float64))
            self.env.sim.forward()
        return self._obs()

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape[0] != self.action_dimension:
            raise EnvError(f"{self.name}: action has {action.shape[0]} dims, the environment takes "
                           f"{self.action_dimension}")
        cameras = self._camera_observables()
        for o in cameras:  # robosuite's step would render each camera once more, for observations _obs() replaces
            o.set_enabled(False)
        try:
            _, reward, done, info = self.env.step(action)
        finally:
            for o in cameras:
                o.set_enabled(True)
        self.env.sim.forward()  # positions of bodies and sites for the final joint positions (mj_step leaves stale ones)
        return self._obs(), float(reward), bool(done), info

    def _camera_observables(self) -> list:
        """The enabled camera observables (rendered by :meth:`_obs`, once per step)."""
        return [o for o in self.env._observables.values() if o.modality == "image" and o.is_enabled()]

    def is_success(self) -> dict:
        return {"task": bool(self.env._check_success())}

    def get_state(self, include_model: bool = True) -> dict:
        out = {"model": self.env.sim.model.get_xml() if include_model else None,
               "states": np.asarray(self.env.sim.get_state().flatten(), dtype=np.float64)}
        if hasattr(self.env, "get_ep_meta"):
            import json

            out["ep_meta"] = json.dumps(self.env.get_ep_meta())
        return out

    def render(self, height: int = 256, width: int = 256, camera_name: str | None = None) -> np.ndarray:
        if not self.render_enabled:
            raise EnvError(f"{self.name} was created without offscreen rendering; create it with render=True")
        cam = camera_name or "agentview"
        self._ensure_render_context()
        img = self.env.sim.render(height=int(height), width=int(width), camera_name=cam)
        return np.ascontiguousarray(img[::-1])

    def _ensure_render_context(self) -> None:
        """An offscreen render context on the current simulator (a hard reset makes a new one); reads nothing and
        writes nothing of the simulator state."""
        sim = self.env.sim
        if sim._render_context_offscreen is None:
            from robosuite.utils.binding_utils import MjRenderContextOffscreen

            ctx = MjRenderContextOffscreen(sim, device_id=self.env.render_gpu_device_id)  # attaches itself to sim
            ctx.vopt.geomgroup[0] = 1 if self.env.render_collision_mesh else 0
            ctx.vopt.geomgroup[1] = 1 if self.env.render_visual_mesh else 0

    def serialize(self) -> dict:
        kw = copy.deepcopy(self._meta_kwargs)
        kw.update({k: self._kwargs[k] for k in ("has_renderer", "has_offscreen_renderer", "ignore_done",
                                                   "use_object_obs", "use_camera_obs")})
        return {"env_name": self.name, "type": ROBOSUITE_TYPE, "env_version": self._version, "env_kwargs": kw}

    def close(self) -> None:
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - closing a half-built env must not mask the real error
            pass

    def __repr__(self) -> str:
        return f"RobosuiteEnv({self.name})"
