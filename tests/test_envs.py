"""Simulator adapters (robosuite 1.5, gymnasium). Skipped where the simulator extra is not installed
(``pip install -e '.[sim]'``)."""
import json
import os

import h5py
import numpy as np
import pytest

from modmimic.envs import EnvError, env_from_metadata

robosuite = pytest.importorskip("robosuite", reason="simulator extra not installed (pip install -e '.[sim]')")

from modmimic.demos import OBS_KEYS, generate, task_env_meta  # noqa: E402
from modmimic.envs.robosuite_env import RobosuiteEnv  # noqa: E402


@pytest.fixture(scope="module")
def lift_demos(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lift") / "lift.hdf5")
    generate("Lift", 3, path, seed=0, progress=None)
    return path


@pytest.fixture(scope="module")
def lift_env(lift_demos):
    with h5py.File(lift_demos) as f:
        meta = json.loads(f["data"].attrs["env_args"])
    env = env_from_metadata(meta)
    yield env
    env.close()


def test_reset_to_a_dataset_state_reproduces_the_stored_observation(lift_demos, lift_env):
    with h5py.File(lift_demos) as f:
        for name in ("demo_0", "demo_2"):
            d = f[f"data/{name}"]
            T = int(d.attrs["num_samples"])
            for t in (0, T // 2, T - 1):
                obs = lift_env.reset_to({"model": d.attrs["model_file"], "states": d["states"][t]})
                for k in OBS_KEYS:
                    np.testing.assert_allclose(obs[k], d[f"obs/{k}"][t], atol=2e-5, err_msg=f"{name} t={t} {k}")
            # states alone (same model) are enough too
            obs = lift_env.reset_to({"states": d["states"][1]})
            np.testing.assert_allclose(obs["object"], d["obs/object"][1], atol=2e-5)


def test_replaying_a_scripted_demo_from_its_start_state_succeeds(lift_demos, lift_env):
    with h5py.File(lift_demos) as f:
        for name in ("demo_0", "demo_1", "demo_2"):
            d = f[f"data/{name}"]
            lift_env.reset_to({"model": d.attrs["model_file"], "states": d["states"][0]})
            success = False
            for a in d["actions"][()]:
                lift_env.step(a)
                success = success or lift_env.is_success()["task"]
            assert success, name


def test_embedded_default_dataset_reproduces_in_the_simulator(lift_env):
    """The shipped Lift demos (compressed model_file): their states reproduce their observations, and a demo's
    actions replayed from its start state lift the cube."""
    from modmimic.data.default import default_dataset_path
    from modmimic.data.hdf5 import read_env_meta, read_model_file

    path = default_dataset_path()
    assert read_env_meta(path)["env_kwargs"]["controller_configs"] == lift_env.serialize()["env_kwargs"][
        "controller_configs"]
    with h5py.File(path) as f:
        for name in ("demo_7", "demo_150"):
            d = f[f"data/{name}"]
            model = read_model_file(d)
            assert "model_file" not in d.attrs and "<mujoco" in model
            T = int(d.attrs["num_samples"])
            for t in (0, T // 2):
                obs = lift_env.reset_to({"model": model, "states": d["states"][t]})
                for k in OBS_KEYS:
                    np.testing.assert_allclose(obs[k], d[f"obs/{k}"][t], atol=2e-5, err_msg=f"{name} t={t} {k}")
            lift_env.reset_to({"model": model, "states": d["states"][0]})
            success = False
            for a in d["actions"][()]:
                lift_env.step(a)
                success = success or lift_env.is_success()["task"]
            assert success, name


def test_compressed_model_file_round_trip(tmp_path):
    from modmimic.data.hdf5 import read_model_file

    path = str(tmp_path / "c.hdf5")
    generate("Lift", 1, path, seed=3, progress=None, compress_model=True)
    plain = str(tmp_path / "p.hdf5")
    generate("Lift", 1, plain, seed=3, progress=None)
    with h5py.File(path) as f, h5py.File(plain) as g:
        assert read_model_file(f["data/demo_0"]) == g["data/demo_0"].attrs["model_file"]
        assert f["data/demo_0/model_file"].compression == "gzip"
        np.testing.assert_array_equal(f["data/demo_0/states"][()], g["data/demo_0/states"][()])
    assert os.path.getsize(path) < os.path.getsize(plain)


def test_seeded_resets_are_reproducible(lift_env):
    a = lift_env.reset(seed=5)
    b = lift_env.reset(seed=6)
    c = lift_env.reset(seed=5)
    assert np.array_equal(a["object"], c["object"]) and np.array_equal(a["robot0_joint_pos"], c["robot0_joint_pos"])
    assert not np.array_equal(a["object"], b["object"])
    assert a["object"].shape == (10,) and "object-state" not in a


def test_robomimic_1_4_controller_configs_are_converted():
    """robomimic's released datasets store robosuite <= 1.4 controller dicts, which robosuite 1.5 rejects."""
    meta = task_env_meta("Lift")
    meta["env_version"] = "1.4.1"
    meta["env_kwargs"]["controller_configs"] = {
        "type": "OSC_POSE", "input_max": 1, "input_min": -1, "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
        "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], "kp": 150, "damping_ratio": 1,
        "impedance_mode": "fixed", "kp_limits": [0, 300], "damping_ratio_limits": [0, 10], "position_limits": None,
        "orientation_limits": None, "uncouple_pos_ori": True, "control_delta": True, "interpolation": None,
        "ramp_ratio": 0.2}
    with pytest.warns(UserWarning, match="recorded with robosuite 1.4.1"):
        env = env_from_metadata(meta)
    cc = env.serialize()["env_kwargs"]["controller_configs"]
    assert cc["body_parts"]["right"]["type"] == "OSC_POSE" and list(cc["body_parts"]) == ["right"]
    obs = env.reset(seed=0)
    obs2, r, done, _ = env.step(np.zeros(7))
    assert env.action_dimension == 7 and np.allclose(obs["robot0_eef_pos"], obs2["robot0_eef_pos"], atol=5e-3)
    env.close()


def test_can_observations_are_fresh_after_reset():
    """robosuite 1.5 returns zeros for Can's object-to-eef observables right after reset unless forced."""
    env = env_from_metadata(task_env_meta("Can"))
    obs = env.reset(seed=3)
    rel = obs["Can_to_robot0_eef_pos"]
    assert np.abs(rel).max() > 0.01 and obs["object"].shape == (14,)
    # robosuite 1.5 orders object-state as (Can_to_eef_pos, Can_to_eef_quat, Can_pos, Can_quat)
    assert np.allclose(obs["object"][7:10], obs["Can_pos"]) and np.allclose(obs["object"][:3], rel)
    env.close()


def test_bad_robosuite_metadata():
    meta = task_env_meta("Lift")
    meta["env_name"] = "Lfit"
    with pytest.raises(EnvError, match="no environment 'Lfit' \\(did you mean 'Lift'\\?\\)"):
        env_from_metadata(meta)
    meta = task_env_meta("Lift")
    meta["env_kwargs"]["not_a_kwarg"] = 1
    with pytest.raises(EnvError, match="rejected the dataset's env_kwargs"):
        env_from_metadata(meta)


def test_offscreen_rendering_and_video(tmp_path):
    from modmimic.envs.video import VideoWriter

    env = env_from_metadata(task_env_meta("Lift"), render=True)
    assert isinstance(env, RobosuiteEnv)
    env.reset(seed=0)
    img = env.render(height=64, width=80)
    assert img.shape == (64, 80, 3) and img.dtype == np.uint8 and img.std() > 5
    path = str(tmp_path / "v.mp4")
    with VideoWriter(path, fps=20) as v:
        for _ in range(4):
            env.step(np.zeros(7))
            v.append(env.render(height=64, width=64))
    env.close()
    import imageio

    frames = [f for f in imageio.get_reader(path, format="FFMPEG")]  # list() trips on its len() = inf
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3) and os.path.getsize(path) > 0


# --- gymnasium ------------------------------------------------------------------------------------------------

def test_gymnasium_mujoco_env_reset_to_and_seeding():
    pytest.importorskip("gymnasium")
    meta = {"env_name": "InvertedPendulum-v5", "type": 2, "env_version": "1", "env_kwargs": {}}
    env = env_from_metadata(meta)
    a = env.reset(seed=3)
    assert list(a) == ["flat"] and a["flat"].shape == (4,)
    assert np.array_equal(a["flat"], env.reset(seed=3)["flat"])
    for _ in range(3):
        obs, r, done, _ = env.step(np.array([0.1]))
    st = env.get_state()
    env.reset(seed=9)
    back = env.reset_to(st)
    np.testing.assert_allclose(back["flat"], obs["flat"], atol=1e-12)
    assert env.is_success() == {"task": False} and env.action_dimension == 1
    env.close()


def test_gymnasium_dict_observations():
    gym = pytest.importorskip("gymnasium")
    from gymnasium import spaces

    class Goal(gym.Env):
        observation_space = spaces.Dict({"observation": spaces.Box(-1, 1, (3,)),
                                         "desired_goal": spaces.Box(-1, 1, (2,))})
        action_space = spaces.Box(-1, 1, (2,))

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.x = self.np_random.uniform(-1, 1, 3)
            return {"observation": self.x, "desired_goal": self.x[:2]}, {}

        def step(self, a):
            return {"observation": self.x, "desired_goal": self.x[:2]}, 0.0, False, False, {"is_success": True}

    gym.register("ModmimicTestGoal-v0", entry_point=lambda **kw: Goal())
    env = env_from_metadata({"env_name": "ModmimicTestGoal-v0", "type": 2, "env_kwargs": {}})
    obs = env.reset(seed=0)
    assert set(obs) == {"observation", "desired_goal"} and obs["desired_goal"].shape == (2,)
    assert env.is_success() == {"task": False}
    env.step(np.zeros(2))
    assert env.is_success() == {"task": True}
    with pytest.raises(EnvError, match="gymnasium cannot make 'NoSuchEnv-v0'"):
        env_from_metadata({"env_name": "NoSuchEnv-v0", "type": 2, "env_kwargs": {}})


def test_gymnasium_env_module_is_imported_only_when_trusted(tmp_path, monkeypatch):
    """``module:EnvId`` env names come from dataset/checkpoint files: the module is imported only when
    ``MODMIMIC_TRUSTED_MODULES`` lists it (importing runs its code)."""
    gym = pytest.importorskip("gymnasium")
    marker = tmp_path / "imported"
    (tmp_path / "mm_env_pkg_probe.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "import gymnasium\n"
        "gymnasium.register('MmProbe-v0', entry_point='gymnasium.envs.classic_control:PendulumEnv')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MODMIMIC_TRUSTED_MODULES", raising=False)
    meta = {"env_name": "mm_env_pkg_probe:MmProbe-v0", "type": 2, "env_kwargs": {}}
    with pytest.raises(EnvError, match="import module 'mm_env_pkg_probe', which is not trusted.*MODMIMIC_TRUSTED_MODULES"):
        env_from_metadata(meta)
    assert not marker.exists()
    monkeypatch.setenv("MODMIMIC_TRUSTED_MODULES", "mm_env_pkg_probe")
    env = env_from_metadata(meta)
    assert marker.exists() and env.action_dimension == 1
    gym.registry.pop("MmProbe-v0", None)
