"""Write small robomimic-format HDF5 files (tests, benchmarks, the generated default dataset).

``write_robomimic_hdf5`` writes demos given as numpy dicts in the exact robomimic layout; ``make_reach_dataset``
generates demonstrations of a point-reaching task whose expert action is a known function of the observation
(``action = clip(k * (goal - pos))``), so that a learned policy can be checked against it.
"""
from __future__ import annotations

import json

import h5py
import numpy as np


def write_robomimic_hdf5(path: str, demos: list[dict], env_args: dict | None = None,
                         masks: dict | None = None) -> None:
    """``demos[i]`` = {"obs": {k: (T, ...)}, "next_obs": {...} (optional), "actions": (T, A), "rewards": (T,),
    "dones": (T,), "states": (T, S) (optional), and any extra dataset (e.g. "action_dict/pos")}."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for i, d in enumerate(demos):
            g = data.create_group(f"demo_{i}")
            T = len(d["actions"])
            g.attrs["num_samples"] = T
            total += T
            for name, value in d.items():
                if name in ("obs", "next_obs"):
                    for k, v in value.items():
                        g.create_dataset(f"{name}/{k}", data=v)
                elif name == "attrs":
                    for k, v in value.items():
                        g.attrs[k] = v
                else:
                    g.create_dataset(name, data=value)
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(env_args or {"env_name": "Synthetic", "type": 2, "env_version": "0",
                                                         "env_kwargs": {}})
        for name, demo_names in (masks or {}).items():
            f.create_dataset(f"mask/{name}", data=np.array(demo_names, dtype="S"))


def reach_expert(pos: np.ndarray, goal: np.ndarray, gain: float = 4.0) -> np.ndarray:
    return np.clip(gain * (goal - pos), -1.0, 1.0)


def make_reach_dataset(path: str, n_demos: int = 20, dim: int = 2, seed: int = 0, max_len: int = 40,
                       valid_fraction: float = 0.1, noise: float = 0.0) -> None:
    """Demos of a point moving toward a goal: obs ``pos`` (dim), ``goal_pos`` (dim), ``vel`` (dim);
    ``actions`` = expert velocity command; sparse reward 1 when within 0.05 of the goal, done at the last step."""
    rng = np.random.default_rng(seed)
    demos = []
    for _ in range(n_demos):
        pos = rng.uniform(-1, 1, dim)
        goal = rng.uniform(-1, 1, dim)
        vel = np.zeros(dim)
        obs = {"pos": [], "goal_pos": [], "vel": []}
        acts, rews = [], []
        for t in range(max_len):
            obs["pos"].append(pos.copy()); obs["goal_pos"].append(goal.copy()); obs["vel"].append(vel.copy())
            a = reach_expert(pos, goal) + noise * rng.standard_normal(dim)
            a = np.clip(a, -1, 1)
            vel = 0.1 * a
            pos = pos + vel
            acts.append(a)
            success = np.linalg.norm(pos - goal) < 0.05
            rews.append(float(success))
            if success:
                break
        o = {k: np.asarray(v, dtype=np.float64) for k, v in obs.items()}
        nxt = {k: np.concatenate([v[1:], v[-1:]], 0) for k, v in o.items()}
        nxt["pos"][-1] = pos
        nxt["vel"][-1] = vel
        T = len(acts)
        dones = np.zeros(T, dtype=np.int64)
        dones[-1] = 1
        demos.append({"obs": o, "next_obs": nxt, "actions": np.asarray(acts), "rewards": np.asarray(rews),
                      "dones": dones, "states": np.concatenate([o["pos"], o["goal_pos"], o["vel"]], 1)})
    names = [f"demo_{i}" for i in range(n_demos)]
    perm = rng.permutation(n_demos)
    n_valid = max(1, int(round(valid_fraction * n_demos))) if valid_fraction > 0 else 0
    masks = {"train": [names[i] for i in sorted(perm[n_valid:])], "valid": [names[i] for i in sorted(perm[:n_valid])]}
    env_args = {"env_name": "PointReach", "type": 2, "env_version": "0", "env_kwargs": {"dim": dim, "max_len": max_len}}
    write_robomimic_hdf5(path, demos, env_args=env_args, masks=masks)
