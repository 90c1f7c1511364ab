"""Re-render a dataset's observations from its stored simulator states (robomimic ``dataset_states_to_obs``).

    python -m modmimic.dataset states_to_obs <in.hdf5> <out.hdf5> --camera-names agentview robot0_eye_in_hand
        [--camera-height 84] [--camera-width 84] [--depth] [--workers N] [--exclude-next-obs] [--compress]
        [--overwrite]

For every demo: ``obs[t]`` is the observation after ``reset_to`` the demo's model (``model_file``) and ``states[t]``;
``next_obs[t] = obs[t+1]``, and the last ``next_obs`` comes from playing the last action from the last state (as
robomimic; the controllers' internal state, e.g. the gripper's rate-limited command, is not part of ``states``, so it
is warmed by playing the previous action from the previous state first: the last ``next_obs`` then matches a
recorded one closely, every other observation exactly). Observations go through the environment adapter, so images
are upright uint8 ``[T, H, W, 3]`` (``<camera>_image``) and depth maps float32 metres ``[T, H, W, 1]``
(``<camera>_depth``, with ``--depth``), exactly what a rollout in the same environment observes. Observation keys:
those the input demo stores (in their dtypes), else every key the environment gives, plus the camera keys.
Everything else (actions, rewards, dones, states, ``model_file``, ``ep_meta``, masks) is copied unchanged;
``env_args`` records the camera settings, so training and rollouts of an image policy rebuild the same cameras.
``--workers N`` renders demos in N processes (each its own simulator); the output is the same whatever N. The output
is written to ``<out>.partial`` and moved into place when complete; an existing output is replaced only with
``--overwrite``.
"""
from __future__ import annotations

import json
import os
import time

import h5py
import numpy as np

from modmimic.io import written_in_place

from modmimic.data.hdf5 import list_demos, open_hdf5, parse_env_args, read_model_file


class StatesToObsError(ValueError):
    """Bad input: no environment metadata, demos without states or model, an output that exists."""


def camera_keys(camera_names, depth: bool) -> list[str]:
    return [f"{c}_image" for c in camera_names] + ([f"{c}_depth" for c in camera_names] if depth else [])


def extract_demo(env, states: np.ndarray, actions: np.ndarray, model: str, ep_meta, keys=None,
                 next_obs: bool = True) -> dict:
    """``{"obs": {key: [T, ...]}, "next_obs": {...}}`` of one demo, re-observed from its states (``keys``: None =
    every key the environment gives)."""
    T = len(states)
    first = env.reset_to({"model": model, "states": states[0], "ep_meta": ep_meta})
    keys = list(first) if keys is None else list(keys)
    missing = [k for k in keys if k not in first]
    if missing:
        raise StatesToObsError(f"the environment does not observe {missing} (it has {sorted(first)})")
    seq = [first] + [env.reset_to({"states": states[t]}) for t in range(1, T)]
    out = {"obs": {k: np.stack([o[k] for o in seq]) for k in keys}}
    if next_obs:
        if T >= 2:  # the controllers' own state (gripper ramp) is not in `states`: warm it with the previous step
            env.reset_to({"states": states[T - 2]})
            env.step(actions[T - 2])
        env.reset_to({"states": states[T - 1]})
        last, _, _, _ = env.step(actions[T - 1])
        out["next_obs"] = {k: np.stack([o[k] for o in seq[1:]] + [last[k]]) for k in keys}
    return out


# --- one demo, in this process or a worker -------------------------------------------------------------------

_WORKER = {}


def _init_worker(in_path: str, env_meta: dict, use_depth: bool) -> None:
    from modmimic.envs import env_from_metadata

    _WORKER["env"] = env_from_metadata(env_meta, use_image_obs=True, use_depth_obs=use_depth)
    _WORKER["file"] = h5py.File(in_path, "r")


def _demo_job(job) -> tuple[str, dict]:
    name, keys, next_obs = job
    g = _WORKER["file"]["data"][name]
    model = read_model_file(g)
    ep_meta = g.attrs.get("ep_meta")
    ep_meta = ep_meta.decode() if isinstance(ep_meta, bytes) else ep_meta
    states = np.asarray(g["states"][()], dtype=np.float64)
    actions = np.asarray(g["actions"][()], dtype=np.float64)
    return name, extract_demo(_WORKER["env"], states, actions, model, ep_meta, keys, next_obs)


def _close_worker() -> None:
    env, f = _WORKER.pop("env", None), _WORKER.pop("file", None)
    if env is not None:
        env.close()
    if f is not None:
        f.close()


# --- the whole file ----------------------------------------------------------------------------------------------

def _check_input(f: h5py.File, path: str, demos: list[str]) -> dict:
    raw = f["data"].attrs.get("env_args")
    if raw is None:
        raise StatesToObsError(f"{path}: data.attrs['env_args'] is missing: no environment to re-render in")
    env_meta = parse_env_args(raw, path)
    for d in demos:
        g = f["data"][d]
        for name in ("states", "actions"):
            if not isinstance(g.get(name), h5py.Dataset):
                raise StatesToObsError(f"{path}: data/{d} has no {name!r} dataset; states_to_obs needs the "
                                       "simulator states and actions of every demo")
        if read_model_file(g) is None:
            raise StatesToObsError(f"{path}: data/{d} has no model_file (the MJCF XML the states belong to)")
        n = int(np.asarray(g.attrs.get("num_samples", len(g["states"]))).reshape(()))
        if len(g["states"]) != n or len(g["actions"]) != n or n < 1:
            raise StatesToObsError(f"{path}: data/{d} has {len(g['states'])} states and {len(g['actions'])} actions "
                                   f"for num_samples={n}")
    return env_meta


def _write(out_grp: h5py.Group, name: str, value: np.ndarray, compress: bool) -> None:
    kw = {"compression": "gzip", "shuffle": value.dtype.itemsize > 1} if compress and value.size > 16 else {}
    if value.ndim >= 3:  # one chunk per image: a window reads a few frames
        kw["chunks"] = (1, *value.shape[1:])
    out_grp.create_dataset(name, data=value, **kw)


def states_to_obs(in_path: str, out_path: str, camera_names, camera_height: int = 84, camera_width: int = 84,
                  depth: bool = False, workers: int = 1, next_obs: bool = True, compress: bool = False,
                  overwrite: bool = False, progress=None) -> dict:
    """Write ``out_path``: ``in_path`` with observations re-rendered from its states. Returns a summary."""
    from modmimic.envs import with_cameras

    camera_names = [camera_names] if isinstance(camera_names, str) else list(camera_names or [])
    if os.path.abspath(in_path) == os.path.abspath(out_path):
        raise StatesToObsError(f"the output {out_path} is the input file; write to another file")
    if os.path.exists(out_path) and not overwrite:
        raise StatesToObsError(f"{out_path} exists; pass --overwrite to replace it (nothing was written)")
    if camera_height < 1 or camera_width < 1 or workers < 1:
        raise StatesToObsError(f"--camera-height ({camera_height}), --camera-width ({camera_width}) and --workers "
                               f"({workers}) must be >= 1")
    if depth and not camera_names:
        raise StatesToObsError("--depth needs --camera-names")
    t0 = time.perf_counter()
    with open_hdf5(in_path) as fin:
        demos = list_demos(fin, None, in_path)
        if not demos:
            raise StatesToObsError(f"{in_path}: no demos")
        env_meta = _check_input(fin, in_path, demos)
        obs_keys = {}
        for d in demos:  # the input's low-dim keys (None: every key the environment gives) and their dtypes
            g = fin["data"][d]
            obs_keys[d] = ({k: g["obs"][k].dtype for k in g["obs"] if not k.endswith(("_image", "_depth"))}
                           if isinstance(g.get("obs"), h5py.Group) else None)
    meta = with_cameras(env_meta, camera_names, camera_height, camera_width, depth) if camera_names else env_meta
    cams = camera_keys(camera_names, depth)
    jobs = [(d, None if obs_keys[d] is None else list(obs_keys[d]) + cams, next_obs) for d in demos]

    pool = None
    try:
        if workers > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(min(workers, len(demos)), _init_worker, (in_path, meta, depth))
            results = pool.imap(_demo_job, jobs)  # in demo order, rendered in parallel
        else:
            _init_worker(in_path, meta, depth)
            results = map(_demo_job, jobs)
        with written_in_place(out_path) as tmp, open_hdf5(in_path) as fin, h5py.File(tmp, "w") as fout:
            data = fout.create_group("data")
            for k, v in fin["data"].attrs.items():
                data.attrs[k] = v
            data.attrs["env_args"] = json.dumps(meta)
            if "mask" in fin:
                fin.copy(fin["mask"], fout, "mask")
            total = 0
            for i, (name, traj) in enumerate(results):
                src, dst = fin["data"][name], data.create_group(name)
                for k, v in src.attrs.items():
                    dst.attrs[k] = v
                for k in src:
                    if k not in ("obs", "next_obs"):
                        fin.copy(src[k], dst, k)
                for grp, arrays in traj.items():
                    for k, v in arrays.items():
                        dtype = (obs_keys[name] or {}).get(k)
                        _write(dst, f"{grp}/{k}", np.asarray(v, dtype=dtype) if dtype is not None else v, compress)
                total += len(src["states"])
                if progress is not None:
                    progress(f"  {i + 1}/{len(demos)} demos ({time.perf_counter() - t0:.0f} s)")
            data.attrs["total"] = total
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _close_worker()
    return {"demos": len(demos), "samples": total, "cameras": camera_names, "keys": cams,
            "wall_seconds": time.perf_counter() - t0, "path": os.path.abspath(out_path),
            "bytes": os.path.getsize(out_path)}
