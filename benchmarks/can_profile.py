"""Where Can (PickPlaceCan) policies fail, from rollouts that ``modmimic.eval ... write_dataset=`` recorded, and how
far a policy's first action is from the scripted expert's.

    python benchmarks/can_profile.py rollouts.hdf5 [--horizon 300] [--object-key Can_pos]
    python benchmarks/can_profile.py --first-action model.pth [--seed 100000] [--episodes 50] [--cameras 84]

Outcomes (one per recorded episode, from the can's pose, the gripper's position and the commanded gripper action):
``success`` (the episode ended before the horizon, or was rewarded); ``never_reach`` (the gripper never came within
2 cm of the can in xy and 3 cm in height); ``never_close`` (it did, but was never commanded shut after that);
``lift_nothing`` (closed, the can never rose 3 cm); ``dropped`` (lifted, back on a surface at the end);
``holding`` (still up when the episode timed out). ``--object-key cube_pos`` sorts Lift episodes the same way
(its first observation has the cube ~1.2 cm above where it settles, so "rose 3 cm" is ~4 cm above the table's cube).

``--first-action``: for each start (episode ``i`` from ``seed + i``, as ``modmimic.eval`` plays them) the scripted
expert's first action (``modmimic.demos.CanExpert``, a saturating controller towards 10 cm above the can) against the
policy's, on the same observation (both cameras rendered at ``--cameras`` pixels, as the image demos). The xy error
of the first step is a cheap probe of whether an image policy located the can.
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

OUTCOMES = ("success", "never_reach", "never_close", "lift_nothing", "dropped", "holding")


def outcome(can: np.ndarray, eef: np.ndarray, actions: np.ndarray, rewards: np.ndarray, horizon: int) -> str:
    """One episode's outcome from its ``[T, 3]`` can and gripper positions, ``[T, 7]`` actions, ``[T]`` rewards."""
    if len(actions) < horizon or rewards.max() > 0:
        return "success"
    rel = eef - can
    near = np.flatnonzero((np.linalg.norm(rel[:, :2], axis=1) < 0.02) & (np.abs(rel[:, 2]) < 0.03))
    if len(near) == 0:
        return "never_reach"
    if not (actions[near[0]:, 6] > 0).any():
        return "never_close"
    up = can[:, 2] > can[0, 2] + 0.03
    if not up.any():
        return "lift_nothing"
    return "holding" if up[-1] else "dropped"


def profile(path: str, horizon: int, object_key: str = "Can_pos") -> Counter:
    import h5py

    from modmimic.data.hdf5 import list_demos

    counts = Counter()
    with h5py.File(path, "r") as f:
        for name in list_demos(f, path=path):
            d = f["data"][name]
            o = d["obs"]
            kind = outcome(o[object_key][()], o["robot0_eef_pos"][()], d["actions"][()], d["rewards"][()], horizon)
            counts[kind] += 1
            print(f"{name}: {kind} ({len(d['actions'])} steps)")
    return counts


def first_action_errors(checkpoint: str, seed: int, episodes: int, size: int) -> np.ndarray:
    """``[episodes]`` xy distance between the expert's and the policy's first action."""
    from modmimic.demos import CanExpert, make_env
    from modmimic.policy import policy_from_checkpoint

    policy = policy_from_checkpoint(ckpt_path=checkpoint)[0]
    env = make_env("Can", camera_names=("agentview", "robot0_eye_in_hand"), camera_height=size, camera_width=size)
    errors = []
    for i in range(episodes):
        obs = env.reset(seed=seed + i)
        expert = CanExpert()
        expert.reset(env, obs)
        policy.start_episode()
        a_e, a_p = expert.act(obs), policy(obs)
        errors.append(float(np.linalg.norm(a_e[:2] - a_p[:2])))
        print(f"seed {seed + i}: expert {np.round(a_e[:3], 2)} policy {np.round(a_p[:3], 2)} xy error {errors[-1]:.3f}")
    return np.array(errors)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rollouts", nargs="?")
    p.add_argument("--horizon", type=int, default=300)
    p.add_argument("--object-key", default="Can_pos", help="the object's position observation (Lift: cube_pos)")
    p.add_argument("--first-action", metavar="CHECKPOINT")
    p.add_argument("--seed", type=int, default=100000)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--cameras", type=int, default=84)
    a = p.parse_args(argv)
    if a.first_action:
        e = first_action_errors(a.first_action, a.seed, a.episodes, a.cameras)
        print(f"first-step xy action error over {len(e)} starts: mean {e.mean():.3f}, median {np.median(e):.3f}")
        return 0
    if not a.rollouts:
        p.error("give a rollouts file or --first-action CHECKPOINT")
    counts = profile(a.rollouts, a.horizon, a.object_key)
    print(", ".join(f"{k} {counts[k]}" for k in OUTCOMES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
