"""benchmarks/can_profile.py sorts Can episodes by where they failed (docs/sim_figures.md, "Can from pixels")."""
import importlib.util
import os

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "can_profile", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "can_profile.py"))
can_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(can_profile)

T, H = 300, 300
CAN = np.tile([0.1, -0.2, 0.86], (T, 1))


def episode(eef_to_can, grip, can_z=None, length=T):
    """Positions and actions of a synthetic episode: the gripper at ``CAN + eef_to_can(t)``, command ``grip(t)``."""
    can = CAN[:length].copy()
    if can_z is not None:
        can[:, 2] = [can_z(t) for t in range(length)]
    eef = can + np.array([eef_to_can(t) for t in range(length)])
    actions = np.zeros((length, 7))
    actions[:, 6] = [grip(t) for t in range(length)]
    return can, eef, actions, np.zeros(length)


@pytest.mark.parametrize("case, expected", [
    (dict(eef_to_can=lambda t: [0.0, 0.3, 0.1], grip=lambda t: 1.0), "never_reach"),      # closes far away
    (dict(eef_to_can=lambda t: [0.0, 0.0, 0.01], grip=lambda t: -1.0), "never_close"),
    (dict(eef_to_can=lambda t: [0.0, 0.0, 0.01], grip=lambda t: 1.0 if t > 50 else -1.0), "lift_nothing"),
    (dict(eef_to_can=lambda t: [0.0, 0.0, 0.0], grip=lambda t: 1.0 if t > 50 else -1.0,
          can_z=lambda t: 0.86 + (0.2 if 80 < t < 150 else 0.0)), "dropped"),
    (dict(eef_to_can=lambda t: [0.0, 0.0, 0.0], grip=lambda t: 1.0 if t > 50 else -1.0,
          can_z=lambda t: 0.86 + (0.2 if t > 80 else 0.0)), "holding"),
    (dict(eef_to_can=lambda t: [0.0, 0.3, 0.1], grip=lambda t: -1.0, length=120), "success"),  # ended early
])
def test_outcomes(case, expected):
    assert can_profile.outcome(*episode(**case), horizon=H) == expected


def test_a_rewarded_episode_is_a_success_at_the_horizon():
    can, eef, actions, rewards = episode(lambda t: [0.0, 0.3, 0.1], lambda t: -1.0)
    rewards[-1] = 1.0
    assert can_profile.outcome(can, eef, actions, rewards, horizon=H) == "success"


@pytest.mark.parametrize("key", ["Can_pos", "cube_pos"])
def test_profile_counts_a_recorded_file(tmp_path, key):
    """Can's rollouts by default; Lift's with ``object_key="cube_pos"``."""
    import h5py

    path = str(tmp_path / "rollouts.hdf5")
    cases = {"demo_2": episode(lambda t: [0.0, 0.3, 0.1], lambda t: -1.0),                 # never reaches
             "demo_10": episode(lambda t: [0.0, 0.3, 0.1], lambda t: -1.0, length=120)}    # ended by success
    with h5py.File(path, "w") as f:
        for name, (can, eef, actions, rewards) in cases.items():
            g = f.create_group(f"data/{name}")
            g[f"obs/{key}"], g["obs/robot0_eef_pos"], g["actions"], g["rewards"] = can, eef, actions, rewards
    counts = can_profile.profile(path, horizon=H, object_key=key)
    assert counts == {"never_reach": 1, "success": 1}
    if key != "Can_pos":
        with pytest.raises(KeyError):
            can_profile.profile(path, horizon=H)
