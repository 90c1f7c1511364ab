"""Image datasets from simulator states (states_to_obs) and image rollouts, on short scripted Lift demos rendered
offscreen (MUJOCO_GL=egl) at tiny sizes."""
import json
import os

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("robosuite")
os.environ.setdefault("MUJOCO_GL", "egl")

from modmimic import demos  # noqa: E402
from modmimic import keys as K  # noqa: E402
from modmimic.data.hdf5 import load_episode_store, read_model_file  # noqa: E402

CAMS = ["agentview", "robot0_eye_in_hand"]
SIZE = 16
STEPS = 6


def write_short_demos(path, n=2, steps=STEPS, **env_kwargs):
    """``n`` scripted Lift episodes of ``steps`` steps (not finished: only their states matter here)."""
    from modmimic.rollout import DatasetWriter

    env = demos.make_env("Lift", **env_kwargs)
    cams = [f"{c}_image" for c in env_kwargs.get("camera_names", ())]
    w = DatasetWriter(path, env.serialize(), obs_dtype=np.float32, obs_keys=demos.OBS_KEYS + cams)
    try:
        for i in range(n):
            traj, _, _ = demos.expert_episode(env, demos.LiftExpert(), seed=i, max_steps=steps)
            w.add(traj)
        w.close({"train": list(w.names)})
    finally:
        env.close()
    return path


@pytest.fixture(scope="module")
def lift_states(tmp_path_factory):
    return write_short_demos(str(tmp_path_factory.mktemp("lift") / "lift_low_dim.hdf5"))


@pytest.fixture(scope="module")
def lift_images(lift_states, tmp_path_factory):
    from modmimic.dataset import main

    out = str(tmp_path_factory.mktemp("img") / "lift_image.hdf5")
    rc = main(["states_to_obs", lift_states, out, "--camera-names", *CAMS, "--camera-height", str(SIZE),
               "--camera-width", str(SIZE), "--depth"])
    assert rc == 0
    return out


def test_states_to_obs_reproduces_low_dim_and_writes_images(lift_states, lift_images, capsys):
    with h5py.File(lift_states) as a, h5py.File(lift_images) as b:
        assert sorted(a["data"]) == sorted(b["data"]) == ["demo_0", "demo_1"]
        for d in a["data"]:
            src, dst = a["data"][d], b["data"][d]
            T = src.attrs["num_samples"]
            assert dst.attrs["num_samples"] == T and np.array_equal(src["states"][()], dst["states"][()])
            assert np.array_equal(src["actions"][()], dst["actions"][()])
            for k in demos.OBS_KEYS:
                assert dst[f"obs/{k}"].dtype == src[f"obs/{k}"].dtype == np.float32
                np.testing.assert_allclose(dst[f"obs/{k}"][()], src[f"obs/{k}"][()], atol=1e-6, rtol=0)
                np.testing.assert_allclose(dst[f"next_obs/{k}"][:-1], src[f"next_obs/{k}"][:-1], atol=1e-6, rtol=0)
            # the last next_obs is simulated (play the last action): close, not exact
            last = np.abs(dst["next_obs/robot0_eef_pos"][-1] - src["next_obs/robot0_eef_pos"][-1]).max()
            assert last < 1e-3, last
            for c in CAMS:
                img, dep = dst[f"obs/{c}_image"], dst[f"obs/{c}_depth"]
                assert img.dtype == np.uint8 and img.shape == (T, SIZE, SIZE, 3)
                assert dep.dtype == np.float32 and dep.shape == (T, SIZE, SIZE, 1)
                assert np.all(dep[()] > 0) and img[()].std() > 0  # metric depth; a real picture
                assert np.array_equal(dst[f"next_obs/{c}_image"][:-1], img[1:])
        assert np.array_equal(b["mask/train"][()], a["mask/train"][()])
        kw = json.loads(b["data"].attrs["env_args"])["env_kwargs"]
        assert (kw["camera_names"], kw["camera_heights"], kw["camera_widths"], kw["camera_depths"]) == (
            CAMS, SIZE, SIZE, True)
    # training reads the images as uint8 HWC, untouched
    store = load_episode_store(lift_images, ["robot0_eef_pos", "agentview_image"])
    assert store.uint8[K.obs("agentview_image")].dtype == torch.uint8
    with h5py.File(lift_images) as b:
        first = b["data/demo_0/obs/agentview_image"][()]
        assert np.array_equal(store.uint8[K.obs("agentview_image")][:STEPS].numpy(), first)
    # an existing output is never overwritten without --overwrite
    from modmimic.dataset import main

    before = os.stat(lift_images).st_mtime_ns
    assert main(["states_to_obs", lift_states, lift_images, "--camera-names", "agentview"]) == 2
    assert "--overwrite" in capsys.readouterr().err and os.stat(lift_images).st_mtime_ns == before


def test_rollout_image_equals_dataset_image(lift_images):
    """The observation a policy gets at rollout (environment made the rollout way from the dataset's env_args, through
    RolloutPolicy's input preparation) equals the dataset image of the same state, pixel for pixel."""
    from modmimic.envs.vector import make_envs
    from modmimic.policy import RolloutPolicy
    from modmimic.rollout import camera_obs_flags

    keys = ["agentview_image", "robot0_eye_in_hand_image", "agentview_depth"]
    assert camera_obs_flags(keys) == {"use_image_obs": True, "use_depth_obs": True}
    assert camera_obs_flags(["robot0_eef_pos"]) == {"use_image_obs": False, "use_depth_obs": False}

    class Stub:  # RolloutPolicy's input path needs only a device
        device = torch.device("cpu")

    prep = RolloutPolicy(Stub())._prepare
    with h5py.File(lift_images) as f:
        meta = json.loads(f["data"].attrs["env_args"])
        g = f["data/demo_1"]
        envs = make_envs(meta, 1, **camera_obs_flags(keys))
        try:
            for t in (0, STEPS - 1):
                state = {"states": g["states"][t]}
                if t == 0:
                    state.update(model=read_model_file(g), ep_meta=g.attrs.get("ep_meta"))
                envs.send(0, ("reset_to", state, None))
                obs = envs.recv(0)["obs"]
                seen = prep(obs, False, keys)
                for k in keys:
                    assert seen[k].dtype == (torch.uint8 if k.endswith("_image") else torch.float32)
                    assert np.array_equal(seen[k][0].numpy(), g[f"obs/{k}"][t]), (k, t)
        finally:
            envs.close()


@pytest.mark.slow
def test_generate_with_cameras_equals_states_to_obs(tmp_path):
    """Images recorded while generating demos (camera_names=...) equal the ones states_to_obs re-renders from the
    states, with 2 workers."""
    from modmimic.states_to_obs import states_to_obs

    src = write_short_demos(str(tmp_path / "gen.hdf5"), n=2, steps=4, camera_names=CAMS, camera_height=SIZE,
                            camera_width=SIZE)
    out = str(tmp_path / "re.hdf5")
    states_to_obs(src, out, CAMS, SIZE, SIZE, workers=2)
    with h5py.File(src) as a, h5py.File(out) as b:
        for d in a["data"]:
            for c in CAMS:
                assert np.array_equal(a[f"data/{d}/obs/{c}_image"][()], b[f"data/{d}/obs/{c}_image"][()])


def test_a_step_renders_each_camera_once_and_observes_its_state():
    """robosuite's own step renders the cameras for observations the adapter then recomputes after ``sim.forward``:
    the adapter switches them off for that call, so each camera renders once per step (it rendered twice: half the
    image-rollout and image-generation speed), and the observation is the one ``reset_to`` gives for the same
    state."""
    env = demos.make_env("Lift", camera_names=CAMS, camera_height=SIZE, camera_width=SIZE)
    try:
        env.reset(seed=0)
        sim, calls = env.base_env.sim, []
        real = sim.render
        sim.render = lambda *a, **k: (calls.append(k.get("camera_name")), real(*a, **k))[1]
        obs, _, _, _ = env.step(np.full(env.action_dimension, 0.3))
        obs2, _, _, _ = env.step(np.full(env.action_dimension, -0.2))
        assert sorted(calls) == sorted(CAMS * 2)
        again = env.reset_to(env.get_state(include_model=False))
        assert set(again) == set(obs2) and {f"{c}_image" for c in CAMS} <= set(obs2)
        for k in obs2:
            assert np.array_equal(obs2[k], again[k]), k
        assert not np.array_equal(obs["agentview_image"], obs2["agentview_image"])
    finally:
        env.close()
