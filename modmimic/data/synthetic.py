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


def chain_optimal_q(n_states: int = 5, discount: float = 0.9) -> np.ndarray:
    """``Q*[s, j]`` of the chain MDP of :func:`make_chain_dataset` for ``j`` = 0 (left) / 1 (right), for the
    non-terminal states ``s = 0 .. n_states - 2``: right ends the episode with reward 1 from ``n_states - 2``, so
    ``Q*(s, right) = gamma^(n-2-s)``, ``Q*(s, left) = gamma * V*(max(s-1, 0))``."""
    v = np.array([discount ** (n_states - 2 - s) for s in range(n_states - 1)])
    q = np.zeros((n_states - 1, 2))
    q[:, 1] = v
    q[:, 0] = [discount * v[max(s - 1, 0)] for s in range(n_states - 1)]
    return q


def chain_obs(states, n_states: int = 5) -> np.ndarray:
    """One-hot observations ``[..., n_states]`` of chain states."""
    return np.eye(n_states)[np.asarray(states)]


def make_chain_dataset(path: str, n_states: int = 5, n_episodes: int = 200, p_right: float = 0.7, seed: int = 0,
                       max_len: int = 30, action_scale: float = 0.6, action_noise: float = 0.1) -> None:
    """Offline-RL data on a deterministic chain with a known optimal Q (:func:`chain_optimal_q`).

    States ``0 .. n_states - 1`` (obs key ``state``: one-hot); a 1-D action moves right when ``a > 0``, left
    otherwise (state 0 stays). Entering the last state gives reward 1 and ends the episode (done = 1); every other
    reward is 0. The behaviour policy goes right with probability ``p_right``, with actions
    ``+-action_scale + N(0, action_noise^2)`` clipped to ``[-1, 1]``; episodes start in a uniformly drawn
    non-terminal state and are cut after ``max_len`` steps (done = 0 there)."""
    rng = np.random.default_rng(seed)
    demos = []
    for _ in range(n_episodes):
        s = int(rng.integers(0, n_states - 1))
        states, acts, rews, dones, nexts = [], [], [], [], []
        for _ in range(max_len):
            right = rng.random() < p_right
            a = np.clip((action_scale if right else -action_scale) + action_noise * rng.standard_normal(), -1, 1)
            s2 = min(s + 1, n_states - 1) if a > 0 else max(s - 1, 0)
            states.append(s); acts.append([a]); nexts.append(s2)
            done = s2 == n_states - 1
            rews.append(float(done)); dones.append(int(done))
            s = s2
            if done:
                break
        demos.append({"obs": {"state": chain_obs(states, n_states)},
                      "next_obs": {"state": chain_obs(nexts, n_states)},
                      "actions": np.asarray(acts), "rewards": np.asarray(rews),
                      "dones": np.asarray(dones, dtype=np.int64)})
    names = [f"demo_{i}" for i in range(n_episodes)]
    env_args = {"env_name": "Chain", "type": 2, "env_version": "0", "env_kwargs": {"n_states": n_states}}
    write_robomimic_hdf5(path, demos, env_args=env_args, masks={"train": names})


def write_image_dataset(path: str, n_demos: int, demo_len: int, cameras=("agentview", "robot0_eye_in_hand"),
                        size: int = 84, low_dim: dict | None = None, action_dim: int = 7, next_obs: bool = False,
                        seed: int = 0, progress=None) -> dict:
    """A robomimic-format image dataset of random content, streamed demo by demo (memory: one demo, whatever the
    total size): per demo ``obs/<camera>_image`` uint8 ``[T, size, size, 3]`` (one HDF5 chunk per frame,
    uncompressed), float32 low-dim keys (``low_dim``: ``{key: dim}``), actions in [-1, 1], rewards and dones
    (and the same for ``next_obs`` when asked). Returns ``{"frames", "image_bytes", "file_bytes"}``."""
    low_dim = low_dim or {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}
    rng = np.random.default_rng(seed)
    groups = ("obs", "next_obs") if next_obs else ("obs",)
    image_bytes = 0
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i in range(n_demos):
            T = int(demo_len)
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            for grp in groups:
                for cam in cameras:
                    img = rng.integers(0, 256, size=(T, size, size, 3), dtype=np.uint8)
                    g.create_dataset(f"{grp}/{cam}_image", data=img, chunks=(1, size, size, 3))
                    image_bytes += img.nbytes
                for k, dim in low_dim.items():
                    g.create_dataset(f"{grp}/{k}", data=rng.standard_normal((T, dim)).astype(np.float32))
            g.create_dataset("actions", data=rng.uniform(-1, 1, (T, action_dim)))
            g.create_dataset("rewards", data=(np.arange(T) == T - 1).astype(np.float64))
            g.create_dataset("dones", data=(np.arange(T) == T - 1).astype(np.int64))
            if progress is not None and (i + 1) % 100 == 0:
                progress(f"  {i + 1}/{n_demos} demos, {image_bytes / 1e9:.2f} GB of images")
        data.attrs["total"] = n_demos * demo_len
        data.attrs["env_args"] = json.dumps({"env_name": "Synthetic", "type": 2, "env_version": "0", "env_kwargs": {}})
    import os

    return {"frames": n_demos * demo_len, "image_bytes": image_bytes, "file_bytes": os.path.getsize(path)}
