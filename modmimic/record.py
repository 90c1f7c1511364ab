"""Record any policy's episodes as a robomimic HDF5 dataset.

From the command line (``python -m modmimic.demos record``)::

    python -m modmimic.demos record env=Pendulum-v1 policy=my_expert:act episodes=50 out=demos.hdf5 \\
        [only_success=false] [seed=0] [max_steps=1000] [valid_fraction=0.1] [trusted_modules=my_expert]

``env``: a gymnasium id (``module:EnvId`` as gymnasium writes it imports ``module`` first; that module must be
trusted like any name in env metadata), a robosuite task (``Lift``, ``Can``, ``Square`` or any robosuite env name)
or a Meta-World task. ``policy``: ``module:callable`` (or ``module.callable``): called with one observation, it
returns one action. A class is instantiated once without arguments and its instances called. The observation is the
environment's own for a gymnasium ``Box`` space (a numpy array), else a dict of numpy arrays by key (gymnasium
``Dict`` spaces split per key, nested keys joined with ``/``; robosuite's observation dict). The policy's module
is code the command runs, so it is imported only when it is trusted (:mod:`modmimic.trust`): inside ``modmimic``, or
listed in ``MODMIMIC_TRUSTED_MODULES=pkg1,pkg2`` or in ``trusted_modules=pkg1,pkg2`` on the command line.

The file: ``data/demo_<i>`` with ``obs/<key>`` and ``next_obs/<key>`` (a gymnasium ``Box`` observation is the one
key ``flat``, robomimic's ``EnvGym`` key; ``Dict`` spaces one key per entry), ``actions``, ``rewards``, ``dones``
(1 at a terminal step and at the last step, robomimic's convention), ``states`` when the environment gives them
(MuJoCo ``[qpos, qvel]``, robosuite's flat state), attributes ``seed`` (the episode's ``reset(seed=)``),
``success`` and ``return``; ``data.attrs["env_args"]`` rebuilds the environment for rollouts and
``python -m modmimic.eval``; ``mask/train``/``mask/valid`` (seeded split) and ``mask/success``. Episode ``i`` (counting
discarded tries) starts from ``seed + i``; ``only_success=true`` keeps successful episodes only (up to ``max_tries``
tries, default ``2 * episodes + 20``). The file appears only once complete (written as ``<out>.partial``, then
moved); an existing ``out`` is never replaced.

In Python, :class:`Recorder` takes gymnasium step tuples from your own loop::

    rec = Recorder("demos.hdf5", env_meta={"env_name": "Pendulum-v1", "type": 2, "env_kwargs": {}})
    obs, info = env.reset(seed=0)
    rec.start(obs, seed=0)
    while True:
        action = policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        rec.step(action, obs, reward, terminated, truncated, info)
        if terminated or truncated:
            break
    rec.end()                    # keeps the episode (rec.end(keep=False) drops it)
    rec.close()                  # writes the masks and env_args, moves the file into place
"""
from __future__ import annotations

import inspect
import os
import time

import numpy as np

from modmimic.envs.gymnasium_env import flatten_obs


class RecordError(ValueError):
    """Bad arguments for recording (exit status 2)."""


def split(obs) -> dict:
    """A gymnasium observation as robomimic's obs keys: a dict split per key (nested joined with ``/``), anything
    else the one key ``flat``."""
    return flatten_obs(obs)


class Recorder:
    """Write episodes given as gymnasium step tuples into a robomimic HDF5 file (through
    :class:`modmimic.rollout.DatasetWriter`). ``start(obs, seed=, state=)`` begins an episode, ``step(action, obs,
    reward, terminated, truncated, info, state=)`` appends one transition (``state``: the simulator state *before*
    the step, when you have one), ``end(keep=True, success=None)`` finishes it, ``close()`` writes the file.
    ``success``: when not given, an episode succeeded if any step's ``info`` had a true ``is_success`` or
    ``success``."""

    def __init__(self, path: str, env_meta: dict, valid_fraction: float = 0.1, seed: int = 0, obs_dtype=None,
                 compression: str | None = "gzip", overwrite: bool = False):
        from modmimic.rollout import DatasetWriter

        if os.path.lexists(path) and not overwrite:
            raise RecordError(f"{path} exists; recording never replaces a file (remove it or name another)")
        if not isinstance(env_meta, dict) or "env_name" not in env_meta or "type" not in env_meta:
            raise RecordError("env_meta must be robomimic env metadata: {'env_name': ..., 'type': ..., "
                              "'env_kwargs': {...}}")
        self.valid_fraction, self.seed = float(valid_fraction), int(seed)
        self.writer = DatasetWriter(path, env_meta, obs_dtype=obs_dtype, compression=compression)
        self.successes: list[str] = []
        self._episode = None

    def start(self, obs, seed: int | None = None, state=None, model: str | None = None) -> None:
        if self._episode is not None:
            raise RecordError("start() while an episode is open: call end() first")
        self._episode = {"obs": [split(obs)], "actions": [], "rewards": [], "dones": [], "states": [],
                         "seed": seed, "success": False, "state": state, "model": model}

    def step(self, action, obs, reward, terminated: bool, truncated: bool = False, info: dict | None = None,
             state=None) -> None:
        e = self._episode
        if e is None:
            raise RecordError("step() before start()")
        if state is None and e["state"] is not None and not e["actions"]:
            state = e["state"]
        if state is not None:
            e["states"].append(np.asarray(state, dtype=np.float64).reshape(-1))
        e["obs"].append(split(obs))
        e["actions"].append(np.asarray(action, dtype=np.float64).reshape(-1))
        e["rewards"].append(float(reward))
        e["dones"].append(int(bool(terminated)))
        info = info or {}
        if any(bool(np.any(info[k])) for k in ("is_success", "success") if k in info):
            e["success"] = True

    def end(self, keep: bool = True, success: bool | None = None) -> str | None:
        """Finish the open episode; returns its demo name when kept."""
        e, self._episode = self._episode, None
        if e is None:
            raise RecordError("end() without an open episode")
        if not keep or not e["actions"]:
            return None
        ok = e["success"] if success is None else bool(success)
        keys = list(e["obs"][0])
        dones = np.asarray(e["dones"], dtype=np.int64)
        dones[-1] = 1
        traj = {"obs": {k: np.stack([o[k] for o in e["obs"][:-1]]) for k in keys},
                "next_obs": {k: np.stack([o[k] for o in e["obs"][1:]]) for k in keys},
                "actions": np.stack(e["actions"]), "rewards": np.asarray(e["rewards"], dtype=np.float64),
                "dones": dones,
                "attrs": {"success": ok, "return": float(np.sum(e["rewards"]))}}
        if e["seed"] is not None:
            traj["attrs"]["seed"] = int(e["seed"])
        if e["model"] is not None:
            traj["attrs"]["model_file"] = e["model"]
        if len(e["states"]) == len(e["actions"]):
            traj["states"] = np.stack(e["states"])
        name = self.writer.add(traj)
        if ok:
            self.successes.append(name)
        return name

    @property
    def names(self) -> list[str]:
        return list(self.writer.names)

    def close(self) -> str:
        """Write ``mask/train``/``mask/valid`` (seeded) and ``mask/success``, ``env_args``; move the file into place."""
        from modmimic.rollout import split_masks

        if self._episode is not None:
            self.end()
        if not self.writer.names:
            self.abort()
            raise RecordError("no episode was recorded, so no file was written")
        masks = split_masks(self.writer.names, self.valid_fraction, self.seed)
        masks["success"] = list(self.successes)
        return self.writer.close(masks)

    def abort(self) -> None:
        self.writer.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# --- the command ---------------------------------------------------------------------------------------------------

def load_policy(name: str, trusted_modules=()):
    """The callable ``module:callable`` (or ``module.callable``), imported only from trusted modules; a class is
    instantiated once without arguments."""
    from modmimic.config import ConfigError
    from modmimic.trust import ENV_VAR, is_trusted, resolve, stored_config_modules

    dotted = name.replace(":", ".", 1) if ":" in name else name
    if "." not in dotted.strip(".") or not all(p.isidentifier() for p in dotted.split(".")):
        raise RecordError(f"policy must be module:callable (e.g. my_expert:act), got {name!r}")
    modules = stored_config_modules(list(trusted_modules))
    module = name.split(":", 1)[0] if ":" in name else name.rsplit(".", 1)[0]
    if not is_trusted(module, modules):
        raise RecordError(f"policy {name!r} is in module {module!r}, which is not trusted: importing it runs its "
                          f"code. If you trust it, add trusted_modules={module.split('.')[0]} or set "
                          f"{ENV_VAR}={module.split('.')[0]}")
    try:
        obj = resolve(dotted, trusted=modules)
    except ConfigError as e:
        raise RecordError(f"policy {name!r}: {e}") from None
    except (ImportError, AttributeError) as e:
        raise RecordError(f"policy {name!r} cannot be imported: {e}") from None
    if inspect.isclass(obj):
        obj = obj()
    if not callable(obj):
        raise RecordError(f"policy {name!r} is not callable")
    return obj


def make_env(env: str, task_env=None):
    """``(environment, box observation)``: a named task (``task_env(name)``: ``(environment, box?)`` or None when
    ``env`` is not one; ``modmimic.demos`` passes its robosuite and Meta-World tasks) or a gymnasium id."""
    from modmimic.envs import GYM_TYPE, env_from_metadata

    named = task_env(env) if task_env is not None else None
    if named is not None:
        return named
    e = env_from_metadata({"env_name": env, "type": GYM_TYPE, "env_kwargs": {}})
    space = getattr(getattr(e, "env", None), "observation_space", None)
    return e, space is not None and type(space).__name__ != "Dict"


def record(env: str, policy: str, episodes: int, out: str, only_success: bool = False, seed: int = 0,
           max_steps: int = 1000, max_tries: int | None = None, valid_fraction: float = 0.1, trusted_modules=(),
           overwrite: bool = False, progress=print, task_env=None) -> dict:
    """Roll ``policy`` out in ``env`` and write the episodes to ``out`` (see the module's docstring); ``task_env``:
    see :func:`make_env`."""
    from modmimic.envs import EnvError

    if episodes < 1 or max_steps < 1:
        raise RecordError(f"episodes and max_steps must be >= 1, got {episodes} and {max_steps}")
    if os.path.lexists(out) and not overwrite:
        raise RecordError(f"{out} exists; recording never replaces a file (remove it or name another)")
    act = load_policy(policy, trusted_modules)
    environment, box = make_env(env, task_env)
    max_tries = max_tries or (2 * episodes + 20 if only_success else episodes)
    t0, tries = time.perf_counter(), 0
    rec = Recorder(out, environment.serialize(), valid_fraction=valid_fraction, seed=seed, overwrite=overwrite)
    try:
        has_state = True
        while len(rec.names) < episodes and tries < max_tries:
            s = seed + tries
            tries += 1
            obs = environment.reset(seed=s)
            start = None
            try:
                start = environment.get_state() if has_state else None
            except (EnvError, NotImplementedError, AttributeError):
                has_state = False
            rec.start(obs, seed=s, model=(start or {}).get("model"))
            success = False
            for _ in range(max_steps):
                state = None
                if has_state:
                    state = (environment.get_state(include_model=False)["states"] if rec._episode["actions"]
                             else start["states"])
                action = np.asarray(act(obs["flat"] if box and set(obs) == {"flat"} else obs), dtype=np.float64)
                if action.shape != (environment.action_dimension,):
                    raise RecordError(f"policy {policy!r} returned an action of shape {action.shape}; {env} takes "
                                      f"({environment.action_dimension},)")
                obs, reward, done, info = environment.step(action)
                success = success or bool(environment.is_success()["task"])
                rec.step(action, obs, reward, bool(done), False, info, state=state)
                if done:
                    break
            keep = success or not only_success
            rec.end(keep=keep, success=success)
            if progress is not None and (tries % 10 == 0 or len(rec.names) == episodes):
                progress(f"  {len(rec.names)}/{episodes} episodes kept from {tries} tries, "
                         f"{len(rec.successes)} successful ({time.perf_counter() - t0:.0f} s)")
        if len(rec.names) < episodes:
            raise RecordError(f"only {len(rec.names)} of {episodes} episodes succeeded in {tries} tries "
                              "(only_success=true); raise max_tries or check the policy")
        path = rec.close()
    except BaseException:
        rec.abort()
        raise
    finally:
        environment.close()
    return {"path": os.path.abspath(path), "episodes": len(rec.names), "tries": tries,
            "successes": len(rec.successes), "wall_seconds": time.perf_counter() - t0}
