"""Where Square policies fail: roll checkpoints out (``modmimic.eval``'s episodes, recorded) and sort every episode by
what happened to the nut, from its recorded pose, the gripper's opening and the commanded gripper action.

    python benchmarks/square_profile.py runs/.../models/model_epoch_100.pth ... [--episodes 20] [--seed 100000]
                                        [--json out.json]
    python benchmarks/square_profile.py --dataset demos.hdf5   # the same measures on demonstrations

Outcomes (one per episode): ``success``; ``never_lift`` (the nut never rose 2 cm; ``never_close`` when the gripper was
never commanded shut); ``dropped`` (lifted, then left off the gripper away from the peg); ``carrying`` (still held
when the episode timed out); ``on_peg`` (left within 5 cm of the peg's axis, not seated). Per episode also: the
gripper's distance from the handle's axis when it first closes (``grasp_miss_cm``; the handle runs 2.9-7.9 cm out
from the nut's centre), where along the handle it closed (``grasp_reach_cm``), how often the gripper reopened while
the nut was up (``reopen_lifted``), the nut's highest point above its start (``max_lift_cm``), and (demos) the
steps the arm stands still (``idle_steps``: eef moving < 1 mm per step).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections import Counter

import numpy as np

PEG_XY = np.array([0.23, 0.10])  # robosuite's square peg (peg1) in NutAssemblySquare
HANDLE = (0.029, 0.079)          # m along the nut's +x: the handle's extent
OUTCOMES = ("success", "never_lift", "dropped", "carrying", "on_peg")


def nut_yaw(quat_xyzw) -> float:
    x, y, z, w = quat_xyzw / np.linalg.norm(quat_xyzw)
    return math.atan2(2 * (x * y + z * w), 1 - 2 * (y * y + z * z))


def handle_miss(eef, nut_pos, nut_quat) -> tuple[float, float]:
    """(distance of the gripper from the handle's segment, m; its coordinate along the nut's +x, m)."""
    yaw = nut_yaw(nut_quat)
    u = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    rel = np.asarray(eef, dtype=np.float64) - nut_pos
    s = float(rel @ u)
    nearest = nut_pos + np.clip(s, *HANDLE) * u
    return float(np.linalg.norm(eef - nearest)), s


def classify(obs: dict, actions: np.ndarray, success: bool) -> dict:
    """One episode (observation arrays by key, ``[T, ...]``; actions ``[T, 7]``) -> its outcome and measures."""
    # robosuite 1.5's Square object-state: nut-to-eef position and quaternion, then the nut's position, quaternion
    nut = np.asarray(obs["object"][:, 7:10], dtype=np.float64)
    quat = np.asarray(obs["object"][:, 10:14], dtype=np.float64)
    eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
    closed = np.asarray(actions)[:, -1] > 0
    rise = nut[:, 2] - nut[0, 2]
    lifted = rise > 0.02
    out = {"success": bool(success), "length": int(len(actions)), "max_lift_cm": round(100 * float(rise.max()), 1),
           "closes": int(np.sum(closed[1:] & ~closed[:-1]) + closed[0])}
    step = np.linalg.norm(np.diff(eef, axis=0), axis=1)
    out["idle_steps"] = int(np.sum(step < 1e-3))
    if closed.any():
        t = int(np.argmax(closed))
        miss, s = handle_miss(eef[t], nut[t], quat[t])
        out.update(first_close=t, grasp_miss_cm=round(100 * miss, 2), grasp_reach_cm=round(100 * s, 2))
    out["reopen_lifted"] = int(np.sum(lifted[1:] & closed[:-1] & ~closed[1:]))
    held_end = bool(closed[-1] and np.linalg.norm(eef[-1] - nut[-1]) < 0.1 and lifted[-1])
    off_peg = float(np.linalg.norm(nut[-1, :2] - PEG_XY))
    out["end_from_peg_cm"] = round(100 * off_peg, 1)
    if success:
        out["outcome"] = "success"
    elif not lifted.any():
        out["outcome"] = "never_lift"
        out["never_close"] = not closed.any()
    elif held_end:
        out["outcome"] = "carrying"
    elif off_peg < 0.05:
        out["outcome"] = "on_peg"
    else:
        out["outcome"] = "dropped"
    return out


def read_episodes(path: str):
    """(obs by key, actions, success) of every demo of a robomimic file."""
    import h5py

    with h5py.File(path, "r") as f:
        for name in sorted(f["data"], key=lambda n: int(n.split("_")[-1])):
            d = f["data"][name]
            obs = {k: d["obs"][k][()] for k in ("object", "robot0_eef_pos", "robot0_gripper_qpos")}
            yield name, obs, d["actions"][()], bool(np.asarray(d["rewards"]).max() > 0)


def profile_checkpoint(ckpt: str, episodes: int, seed: int, horizon: int | None = None) -> dict:
    from modmimic.eval import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rollouts.hdf5")
        s = evaluate(ckpt, episodes=episodes, seed=seed, horizon=horizon, write_dataset=path)
        # success as the evaluation counted it (robosuite's check at any step), not the recorded rewards
        eps = [classify(obs, a, e["success"]) for (_, obs, a, _), e in zip(read_episodes(path), s["episodes"])]
    return {"checkpoint": ckpt, "episodes": episodes, "seed": seed, "success_rate": s["Success_Rate"],
            "counts": dict(Counter(e["outcome"] for e in eps)), "per_episode": eps}


def summary_line(name: str, eps: list) -> str:
    c = Counter(e["outcome"] for e in eps)
    miss = [e["grasp_miss_cm"] for e in eps if "grasp_miss_cm" in e]
    reach = [e["grasp_reach_cm"] for e in eps if "grasp_reach_cm" in e]
    return (f"{name}: {len(eps)} episodes " + " ".join(f"{k}={c.get(k, 0)}" for k in OUTCOMES)
            + f" | first close: miss {np.median(miss) if miss else float('nan'):.1f} cm median, reach "
              f"{np.median(reach) if reach else float('nan'):.1f} cm; never_close="
              f"{sum(bool(e.get('never_close')) for e in eps)}; reopen_lifted={sum(e['reopen_lifted'] for e in eps)};"
              f" length {np.mean([e['length'] for e in eps]):.0f}; idle steps "
              f"{np.mean([e['idle_steps'] for e in eps]):.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*")
    p.add_argument("--dataset", action="append", default=[], help="profile a dataset's demos instead")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    results = []
    for path in a.dataset:
        eps = [dict(classify(obs, act, ok), demo=n) for n, obs, act, ok in read_episodes(path)]
        print(summary_line(path, eps), flush=True)
        results.append({"dataset": path, "per_episode": eps})
    for ckpt in a.checkpoints:
        r = profile_checkpoint(ckpt, a.episodes, a.seed, a.horizon)
        print(summary_line(ckpt, r["per_episode"]), flush=True)
        for i, e in enumerate(r["per_episode"]):
            if e["outcome"] != "success":
                print(f"  episode {i}: {json.dumps(e)}")
        results.append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
