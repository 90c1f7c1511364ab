"""PushT (gym-pusht) and ALOHA sim (gym-aloha) adapters against the benchmarks' own environments, the PushT scripted
expert, and its demos through modmimic's dataset and trainer. Skipped when the extra is not installed
(``pip install 'modmimic[pusht]'`` / ``'modmimic[aloha]'``)."""
import math

import numpy as np
import pytest

from modmimic.envs import EnvError, env_from_metadata
from modmimic.envs.vector import LocalEnvs
from modmimic.rollout import run_episodes, summarize

ONE_STEP = ["train.num_epochs=1", "experiment.epoch_every_n_steps=1", "train.batch_size=4",
            "experiment.rollout.enabled=false", "experiment.logging.log_tb=false",
            "experiment.logging.terminal_output_to_txt=false", "experiment.save.every_n_epochs=null"]


class Act:
    """A policy for the rollout loop (what run_episodes uses of a RolloutPolicy): ``act(obs[key])`` per env."""

    def __init__(self, key: str, dim: int, ac_dim: int, act):
        self.policy = type("Algo", (), {"obs_shapes": {key: (dim,)}, "goal_shapes": {}, "ac_dim": ac_dim})()
        self.action_dim, self.key, self.act = ac_dim, key, act

    def start_episode(self, n):
        pass

    def reset_envs(self, mask):
        pass

    def __call__(self, batch, batched_ob=True):
        return np.stack([self.act(o) for o in batch[self.key]])


# --- PushT --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pusht():
    return pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'modmimic[pusht]'")


def pusht_env(**kw):
    from modmimic.envs.pusht_env import env_meta

    return env_from_metadata(env_meta(**{k: v for k, v in kw.items() if k != "use_image_obs"}),
                             use_image_obs=kw.get("use_image_obs", False))


def test_pusht_resets_and_steps_are_gym_pushts_own(pusht):
    import gymnasium as gym

    env = pusht_env(use_image_obs=True, camera_heights=48, camera_widths=64)
    ref = gym.make("gym_pusht/PushT-v0", disable_env_checker=True)
    obs = env.reset(seed=7)
    assert sorted(obs) == ["agent_pos", "keypoints", "state", "top_image"]
    assert obs["state"].shape == (5,) and obs["keypoints"].shape == (16,) and obs["top_image"].shape == (48, 64, 3)
    assert obs["top_image"].dtype == np.uint8 and env.action_dimension == 2
    ref_obs, _ = ref.reset(seed=7)
    np.testing.assert_array_equal(obs["state"], ref_obs)
    np.testing.assert_array_equal(env.reset(seed=7)["state"], ref_obs)  # the same seed, the same start
    assert not np.array_equal(env.reset(seed=8)["state"], ref_obs)
    env.reset(seed=7)
    rng = np.random.default_rng(0)
    for _ in range(15):  # random targets around the block: contacts happen
        a = obs["state"][2:4] + rng.normal(0, 40, 2)
        obs, r, done, info = env.step(a)
        ref_obs, ref_r, *_ , ref_info = ref.step(a)
        np.testing.assert_array_equal(obs["state"], ref_obs)
        assert r == ref_r and env.is_success()["coverage"] == ref_info["coverage"]
    with pytest.raises(EnvError, match="expected 2"):
        env.step(np.zeros(3))
    env.close()


def test_pusht_success_is_coverage_above_the_benchmarks_threshold(pusht):
    env = pusht_env()
    assert env.threshold == 0.95  # gym-pusht's success_threshold
    goal = np.asarray(env.env.goal_pose, dtype=np.float64)
    far = [60.0, 60.0, 0.0, 0.0]

    def state(dx):  # pusher far away, block at the goal pose shifted dx px along x, at rest
        return np.array([*far, goal[0] + dx, goal[1], goal[2], 0.0, 0.0, 0.0, np.nan, np.nan])

    env.reset_to({"states": state(0.0)})
    assert env.is_success() == {"task": True, "coverage": pytest.approx(1.0)}
    obs, reward, done, info = env.step(np.array([60.0, 60.0]))
    assert info["is_success"] and done and reward == 1.0  # gym-pusht ends the episode at success
    outcomes = []
    for dx in (1.0, 1.5, 2.0, 2.5, 3.0, 6.0):
        env.reset_to({"states": state(dx)})
        s = env.is_success()
        assert s["task"] == (s["coverage"] > 0.95) and s["coverage"] == pytest.approx(env.env._get_coverage())
        _, reward, done, info = env.step(np.array([60.0, 60.0]))
        assert done == info["is_success"] == s["task"] and reward == pytest.approx(min(s["coverage"] / 0.95, 1.0))
        outcomes.append(s["task"])
    assert outcomes[0] and not outcomes[-1]  # 1 px off still covers > 95 %, 6 px off does not


def test_pusht_reset_to_gives_the_recorded_observation(pusht):
    env = pusht_env()
    obs = [env.reset(seed=3)]
    states, rng = [], np.random.default_rng(1)
    for _ in range(20):
        states.append(env.get_state()["states"])
        obs.append(env.step(obs[-1]["state"][2:4] + rng.normal(0, 30, 2))[0])
    for t in (0, 7, 19):
        o = env.reset_to({"states": states[t]})
        for k in o:
            np.testing.assert_array_equal(o[k], obs[t][k])
    with pytest.raises(EnvError, match="12 finite numbers"):
        env.reset_to({"states": np.zeros(5)})


def test_rollouts_report_pushts_max_coverage(pusht):
    """The rollout loop's ``Max_Coverage`` is the mean over episodes of each episode's highest coverage."""
    target = lambda o: o[2:4] + np.array([0.0, 40.0])  # noqa: E731 - push at the block from one side
    meta = pusht_env().serialize()
    with LocalEnvs.from_metadata(meta) as envs:
        eps = run_episodes(Act("state", 5, 2, target), envs, n=2, horizon=12, seed=5)
    env, expected = pusht_env(), []
    for seed in (5, 6):
        o, best = env.reset(seed=seed), -math.inf
        for _ in range(12):
            o, _, done, _ = env.step(target(o["state"]))
            best = max(best, env.is_success()["coverage"])
            if done:
                break
        expected.append(best)
    assert [e.metrics["coverage"] for e in eps] == expected
    assert summarize(eps)["Max_Coverage"] == pytest.approx(np.mean(expected))


def test_pusht_expert_succeeds(pusht):
    """The push-planning expert on 2 seeds (49/50 on seeds 1000-1049, docs/benchmarks_envs.md)."""
    from modmimic.demos import expert_success

    s = expert_success("pusht", episodes=2, seed=1002)
    assert s["successes"] == 2, s


def test_pusht_demos_load_and_train(pusht, tmp_path):
    import h5py

    from modmimic.data.hdf5 import load_episode_store, read_env_meta
    from modmimic.demos import generate
    from modmimic.train import main as train_main

    path = str(tmp_path / "pusht.hdf5")
    s = generate("pusht", 2, path, seed=1002, progress=None, valid_fraction=0.5)
    assert s["demos"] == 2 and s["tries"] == 2
    meta = read_env_meta(path)
    assert meta["env_name"] == "gym_pusht/PushT-v0" and meta["env_kwargs"]["max_episode_steps"] == 300
    with h5py.File(path) as f:
        demo = f["data/demo_0"]
        states, obs0, actions = demo["states"][:], demo["obs/state"][:], demo["actions"][:]
    store = load_episode_store(path, ["state", "keypoints"])
    assert store.obs_shapes() == {"state": (5,), "keypoints": (16,)} and store.ac_dim == 2
    env = env_from_metadata(meta)  # the demo replays: from its start, its actions reach success
    np.testing.assert_allclose(env.reset(seed=1002)["state"], obs0[0], rtol=1e-6)
    np.testing.assert_allclose(env.reset_to({"states": states[5]})["state"], obs0[5], rtol=1e-6)
    rc = train_main(["recipe=bc", f"dataset={path}", "observation.modalities.obs.low_dim=[state,keypoints]",
                     "algo.actor_layer_dims=[8]", "train.action_config.actions.normalization=min_max",
                     f"train.output_dir={tmp_path / 'runs'}", *ONE_STEP])
    assert rc == 0 and np.all((actions >= 0) & (actions <= 512))


# --- ALOHA --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def aloha():
    import modmimic.envs.aloha_env  # noqa: F401 - first: it picks MuJoCo's headless GL (EGL) before mujoco loads

    pytest.importorskip("dm_control", reason="dm-control is not installed: pip install 'modmimic[aloha]'")
    return pytest.importorskip("gym_aloha", reason="gym-aloha is not installed: pip install 'modmimic[aloha]'")


def aloha_env(task="AlohaTransferCube-v0", **kw):
    from modmimic.envs.aloha_env import env_meta

    return env_from_metadata(env_meta(task, **{k: v for k, v in kw.items() if k != "use_image_obs"}),
                             use_image_obs=kw.get("use_image_obs", False))


@pytest.mark.parametrize("task", ["AlohaTransferCube-v0", "AlohaInsertion-v0"])
def test_aloha_resets_and_steps_are_gym_alohas_own(aloha, task):
    import gymnasium as gym
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    env = aloha_env(task)
    obs = env.reset(seed=11)
    assert sorted(obs) == ["agent_pos", "env_state", "qvel"] and env.action_dimension == 14
    objects = (sample_box_pose(11) if task == "AlohaTransferCube-v0" else np.concatenate(sample_insertion_pose(11)))
    np.testing.assert_allclose(obs["env_state"], objects, atol=1e-12)
    assert not np.allclose(env.reset(seed=12)["env_state"], objects)
    ref = gym.make(f"gym_aloha/{task}", obs_type="pixels_agent_pos", observation_width=32, observation_height=24,
                   disable_env_checker=True)
    ref_obs, _ = ref.reset(seed=11)
    obs = env.reset(seed=11)
    np.testing.assert_allclose(obs["agent_pos"], ref_obs["agent_pos"], atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = (obs["agent_pos"] + rng.normal(0, 0.05, 14)).astype(np.float32)  # gym-aloha's action dtype
        obs, r, done, info = env.step(a)
        ref_obs, ref_r, *_ = ref.step(a)
        np.testing.assert_allclose(obs["agent_pos"], ref_obs["agent_pos"], atol=1e-9)
        assert r == ref_r == 0 and not done
        assert env.is_success() == {"task": False, "stage": 0.0, "unstable": 0.0}
    ref.close()
    env.close()


def test_aloha_reset_to_and_cameras(aloha):
    env = aloha_env(use_image_obs=True, camera_heights=24, camera_widths=32)
    obs = [env.reset(seed=2)]
    states = []
    rng = np.random.default_rng(3)
    for _ in range(4):
        states.append(env.get_state()["states"])
        obs.append(env.step(obs[0]["agent_pos"] + rng.normal(0, 0.05, 14))[0])
    assert obs[0]["top_image"].shape == (24, 32, 3) and obs[0]["top_image"].dtype == np.uint8
    for t in (0, 3):
        o = env.reset_to({"states": states[t]})
        for k in ("agent_pos", "qvel", "env_state"):
            np.testing.assert_array_equal(o[k], obs[t][k])
    with pytest.raises(EnvError, match="no camera 'wrist'"):
        aloha_env(camera_names=["wrist"])
    with pytest.raises(EnvError, match="expected 14"):
        env.step(np.zeros(7))


def test_aloha_unstable_simulation_ends_the_episode_not_the_evaluation(aloha):
    """A diverged simulation (dm_control's PhysicsError; seen in an evaluation of Diffusion Policy on the transfer
    cube) ends its episode as a failure with a warning and the last valid observation; the next step asks for a
    reset, after which the environment steps again."""
    import warnings

    env = aloha_env()
    obs = env.reset(seed=1)
    env.physics.data.qvel[:] = 1e12  # MuJoCo flags velocities this large as invalid (mjWARN_BADQVEL)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        o, r, done, info = env.step(obs["agent_pos"])
    assert done and r == 0.0 and info == {"is_success": False, "stage": 0, "unstable": True}
    assert any("became unstable at step 1" in str(x.message) for x in w)
    np.testing.assert_array_equal(o["agent_pos"], obs["agent_pos"])
    assert env.is_success() == {"task": False, "stage": 0.0, "unstable": 1.0}  # rollouts: Max_Unstable
    with pytest.raises(EnvError, match="unstable in this episode; reset first"):
        env.step(obs["agent_pos"])
    obs = env.reset(seed=1)
    assert not env.step(obs["agent_pos"])[2]
    env.close()


def test_aloha_expert_completes_the_handover(aloha):
    """Replayed past the first success (the left gripper touching the lifted cube), the expert's whole plan hands
    the cube over: at the last step the left gripper holds it in the air and the right gripper has let go."""
    from modmimic.aloha_expert import AlohaTransferCubeExpert

    env = aloha_env()
    obs = env.reset(seed=7)
    expert = AlohaTransferCubeExpert()
    expert.reset(env, obs)
    stages = []
    for _ in range(400):
        obs, _, _, info = env.step(expert.act(obs))
        stages.append(info["stage"])
    cube = env.physics.data.qpos[16:19]
    right = env.physics.named.data.geom_xpos[["vx300s_right/10_left_gripper_finger",
                                              "vx300s_right/10_right_gripper_finger"]]
    assert stages.index(4) > 200 and stages[-1] == 4 and cube[2] > 0.2, (stages.index(4), stages[-1], cube)
    assert np.linalg.norm(right.mean(axis=0) - cube) > 0.1
    env.close()


def test_aloha_transfer_cube_expert_and_its_demos(aloha, tmp_path):
    """The scripted transfer-cube expert (50/50 on seeds 0-49 and 1000-1049, docs/benchmarks_envs.md) on seeds 0-4
    (all succeed, the cube changing hands at step ~261), and its demos through the dataset reader and one training
    step."""
    from modmimic.data.hdf5 import load_episode_store, read_env_meta
    from modmimic.demos import expert_success, generate
    from modmimic.train import main as train_main

    s = expert_success("aloha_transfer_cube", episodes=5, seed=0)
    assert s["successes"] == 5 and all(255 <= T <= 275 for T in s["lengths"]), s
    path = str(tmp_path / "cube.hdf5")
    g = generate("aloha_transfer_cube", 1, path, seed=2, progress=None, valid_fraction=0.0)
    assert g["demos"] == g["tries"] == 1
    meta = read_env_meta(path)
    assert meta["env_name"] == "gym_aloha/AlohaTransferCube-v0"
    store = load_episode_store(path, ["agent_pos", "env_state"])
    assert store.obs_shapes() == {"agent_pos": (14,), "env_state": (7,)} and store.ac_dim == 14
    rc = train_main(["recipe=bc", f"dataset={path}", "observation.modalities.obs.low_dim=[agent_pos,env_state]",
                     "algo.actor_layer_dims=[8]", "train.hdf5_validation_filter_key=null",
                     f"train.output_dir={tmp_path / 'runs'}", *ONE_STEP])
    assert rc == 0


def test_aloha_expert_geometry_helpers():
    """The insertion expert's rotations: the shortest turn of one direction onto another, as a quaternion."""
    from modmimic.aloha_expert import quat_from_rotvec, quat_to_mat, rotvec_between

    np.testing.assert_allclose(rotvec_between([1, 0, 0], [0, 1, 0]), [0, 0, math.pi / 2], atol=1e-12)
    np.testing.assert_allclose(quat_from_rotvec([0, 0, math.pi / 2]), [math.sqrt(0.5), 0, 0, math.sqrt(0.5)],
                               atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 3)))
        v = rotvec_between(a, b)
        assert abs(v @ a) < 1e-12 and abs(v @ b) < 1e-12  # about their common normal
        np.testing.assert_allclose(quat_to_mat(quat_from_rotvec(v)) @ a, b, atol=1e-12)
    np.testing.assert_allclose(rotvec_between([0, 0, 1], [0, 0, 1]), 0.0)


def test_aloha_insertion_expert_goes_through_the_stages(aloha):
    """The insertion expert's whole plan replayed on one seed: both objects touched and lifted off the table
    (stage 2) near step 130, the peg touching the pin in the socket (stage 4) after step 250 (and no stage 3 before
    it: it goes in without touching the socket's walls), the objects never back on the table (stage 2 or more from
    there on), and at the end the peg's end inside the socket, between its walls, both held 15 cm over the table."""
    from modmimic.aloha_expert import PEG_HALF, PIN_FACE, SOCKET_MOUTH, AlohaInsertionExpert, object_axis, quat_to_mat

    env = aloha_env("AlohaInsertion-v0", max_episode_steps=300)
    obs = env.reset(seed=3)
    expert = AlohaInsertionExpert()
    expert.reset(env, obs)
    stages = []
    for _ in range(300):
        obs, _, _, info = env.step(expert.act(obs))
        stages.append(info["stage"])
    assert expert.planned_stage == 4
    lifted, inserted = stages.index(2), stages.index(4)
    assert 125 <= lifted <= 140 and 250 <= inserted <= 270 and 3 not in stages[:inserted], (lifted, inserted)
    assert min(stages[lifted:]) >= 2, stages[lifted:]
    q = env.physics.data.qpos
    socket, socket_q = q[23:26], q[26:30]
    end = quat_to_mat(socket_q).T @ (q[16:19] - PEG_HALF * object_axis(q[19:23]) - socket)  # in the socket's frame
    assert PIN_FACE - 0.005 < end[0] < SOCKET_MOUTH and np.all(np.abs(end[1:]) < 0.008), end
    assert q[18] > 0.15 and q[25] > 0.15, (q[18], q[25])
    env.close()


def test_aloha_insertion_expert_and_its_demos(aloha, tmp_path):
    """The scripted insertion expert (50/50 on seeds 0-49 and 1000-1049, docs/benchmarks_envs.md) on seeds 0-2
    (all succeed, the peg touching the pin at step ~260, within gym-aloha's 300-step episodes), and a demo whose
    recorded actions, replayed from its first state, insert the peg again."""
    import h5py

    from modmimic.data.hdf5 import load_episode_store, read_env_meta
    from modmimic.demos import expert_success, generate

    s = expert_success("aloha_insertion", episodes=3, seed=0, max_steps=300)
    assert s["successes"] == 3 and all(255 <= T <= 275 for T in s["lengths"]), s
    path = str(tmp_path / "insertion.hdf5")
    g = generate("aloha_insertion", 1, path, seed=5, progress=None, valid_fraction=0.0)
    assert g["demos"] == g["tries"] == 1
    meta = read_env_meta(path)
    assert meta["env_name"] == "gym_aloha/AlohaInsertion-v0"
    store = load_episode_store(path, ["agent_pos", "env_state"])
    assert store.obs_shapes() == {"agent_pos": (14,), "env_state": (14,)} and store.ac_dim == 14
    with h5py.File(path, "r") as f:
        demo = f["data/demo_0"]
        states, actions = demo["states"][:], demo["actions"][:]
    env = env_from_metadata(meta)
    env.reset_to({"states": states[0]})
    for a in actions:
        env.step(a)
    assert env.is_success()["task"]
    env.close()
