"""robomimic 0.5's action dictionaries with 6D rotations: ``python -m modmimic.dataset extract_action_dict`` and
RolloutPolicy's ``format: rot_6d`` / ``convert_at_runtime`` conversion back to the environment's axis-angle (or Euler)
actions."""
import hashlib
import os

import h5py
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from modmimic import rotations as R
from modmimic.config import ConfigError, compose
from modmimic.data.synthetic import write_robomimic_hdf5
from modmimic.dataset import extract_action_dict, main as dataset_main
from modmimic.policy import (CheckpointError, RolloutPolicy, checkpoint_action_config, load_checkpoint,
                             policy_from_checkpoint)
from modmimic.rollout import RolloutError, check_policy_fits
from modmimic.trainer import build_data, train, with_data

KEYS = "train.action_keys=[action_dict/rel_pos,action_dict/rel_rot_6d,action_dict/gripper]"


def action_config(rot="{normalization:null,format:rot_6d}", pos="{normalization:min_max}"):
    return (f"+train.action_config={{action_dict/rel_pos:{pos},action_dict/rel_rot_6d:{rot},"
            "action_dict/gripper:{normalization:null}}")


def random_rotvecs(rng, n, max_angle):
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * rng.uniform(0, max_angle, (n, 1))


def write_osc_set(path, n_demos=6, seed=0, with_abs=True, length=10):
    """Demos with obs pos/goal_pos/vel (2-D) and 7-D OSC ``actions`` (Δpos in [-1, 1], Δaxis-angle of norm < 1.5,
    gripper +-1); ``actions_abs`` with orientations up to just below pi (absolute end-effector orientations sit near
    a half turn). Masks train/valid."""
    rng = np.random.default_rng(seed)
    demos = []
    for i in range(n_demos):
        T = length + i % 3
        acts = np.concatenate([rng.uniform(-1, 1, (T, 3)), random_rotvecs(rng, T, 1.5),
                               np.where(rng.random((T, 1)) < 0.5, -1.0, 1.0)], 1)
        d = {"obs": {"pos": rng.uniform(-1, 1, (T, 2)), "goal_pos": rng.uniform(-1, 1, (T, 2)),
                     "vel": rng.normal(0, 0.1, (T, 2))},
             "actions": acts, "rewards": np.zeros(T), "dones": (np.arange(T) == T - 1) * 1}
        if with_abs:
            d["actions_abs"] = np.concatenate([rng.uniform(-0.5, 0.5, (T, 3)),
                                               random_rotvecs(rng, T, np.pi - 1e-3), acts[:, 6:]], 1)
        demos.append(d)
    names = [f"demo_{i}" for i in range(n_demos)]
    write_robomimic_hdf5(str(path), demos, masks={"train": names[:-1], "valid": names[-1:]})
    return str(path)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    d = tmp_path_factory.mktemp("action_dict")
    src = write_osc_set(d / "osc.hdf5")
    before = sha(src)
    out = str(d / "osc_dict.hdf5")
    s = extract_action_dict(src, out)
    assert sha(src) == before  # the input is never modified
    return src, out, s


def test_extracted_keys_reconstruct_the_actions(extracted):
    """rel_pos / gripper / the axis-angle copies equal the actions bit for bit; 6D -> axis-angle gives back the
    rotation to 1e-9 (relative and absolute, whose angles reach pi - 1e-3); 6D rows are orthonormal; everything else
    in the file is copied unchanged."""
    src, out, s = extracted
    assert s["demos"] == 6 and s["keys"] == [f"action_dict/{k}" for k in (
        "rel_pos", "rel_rot_axis_angle", "rel_rot_6d", "gripper", "abs_pos", "abs_rot_axis_angle", "abs_rot_6d")]
    with h5py.File(src, "r") as fi, h5py.File(out, "r") as fo:
        assert sorted(fo["mask"]) == sorted(fi["mask"]) and fo["data"].attrs["env_args"] == fi["data"].attrs["env_args"]
        for demo in fi["data"]:
            gi, go = fi["data"][demo], fo["data"][demo]
            for k in ("actions", "actions_abs", "obs/pos", "rewards", "dones"):
                assert np.array_equal(gi[k][()], go[k][()]), k
            ad = go["action_dict"]
            for prefix, key in (("rel_", "actions"), ("abs_", "actions_abs")):
                a = gi[key][()]
                assert ad[prefix + "pos"].dtype == a.dtype
                assert np.array_equal(ad[prefix + "pos"][()], a[:, :3])
                assert np.array_equal(ad[prefix + "rot_axis_angle"][()], a[:, 3:6])
                d6 = ad[prefix + "rot_6d"][()]
                assert d6.shape == (len(a), 6)
                np.testing.assert_allclose(R.rot_6d_to_axis_angle(d6), a[:, 3:6], rtol=0, atol=1e-9)
                rows = d6.reshape(-1, 2, 3)
                gram = np.einsum("tij,tkj->tik", rows, rows)
                np.testing.assert_allclose(gram, np.broadcast_to(np.eye(2), gram.shape), atol=1e-12)
                np.testing.assert_allclose(d6, Rotation.from_rotvec(a[:, 3:6]).as_matrix()[:, :2].reshape(-1, 6),
                                           atol=1e-12)
            assert np.array_equal(ad["gripper"][()], gi["actions"][()][:, 6:])
            assert "base_mode" not in ad


def test_cli_refuses_to_replace_and_bad_input(extracted, tmp_path, capsys):
    src, out, _ = extracted
    before = sha(out)
    assert dataset_main(["extract_action_dict", src, out]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and sha(out) == before
    assert dataset_main(["extract_action_dict", src, src, "--overwrite"]) == 2
    assert "is the input file" in capsys.readouterr().err
    copy = str(tmp_path / "copy.hdf5")
    assert dataset_main(["extract_action_dict", src, copy]) == 0
    assert dataset_main(["extract_action_dict", src, copy, "--overwrite"]) == 0
    assert "action_dict/rel_rot_6d" in capsys.readouterr().out
    # no actions_abs: no abs_* keys; 8-D actions: base_mode
    plain = write_osc_set(tmp_path / "plain.hdf5", n_demos=2, with_abs=False)
    with h5py.File(plain, "r+") as f:
        a = f["data/demo_0/actions"][()]
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = np.concatenate([a, np.full((len(a), 1), 3.0)], 1)
    with h5py.File(plain, "r+") as f:  # the other demo too (a dataset has one action width)
        a = f["data/demo_1/actions"][()]
        del f["data/demo_1/actions"]
        f["data/demo_1/actions"] = np.concatenate([a, np.zeros((len(a), 1))], 1)
    s = extract_action_dict(plain, str(tmp_path / "plain_out.hdf5"))
    assert s["keys"] == [f"action_dict/{k}" for k in ("rel_pos", "rel_rot_axis_angle", "rel_rot_6d", "gripper",
                                                       "base_mode")]
    with h5py.File(tmp_path / "plain_out.hdf5", "r") as f:
        assert np.all(f["data/demo_0/action_dict/base_mode"][()] == 3.0)
    # bad input: exit 2, one line naming the demo, nothing written
    bad = write_osc_set(tmp_path / "bad.hdf5", n_demos=3)
    with h5py.File(bad, "r+") as f:
        del f["data/demo_2/actions_abs"]
        a = f["data/demo_1/actions"][()]
        a[2, 4] = np.nan
        f["data/demo_1/actions"][...] = a
    for mutate, msg in ((None, "data/demo_2/actions_abs is missing"),
                        ("nan", "data/demo_1/actions has NaN"),
                        ("width", "data/demo_0/actions is float64 of shape (10, 5)")):
        if mutate == "nan":
            with h5py.File(bad, "r+") as f:
                for d in ("demo_0", "demo_1"):
                    del f[f"data/{d}/actions_abs"]
        if mutate == "width":
            with h5py.File(bad, "r+") as f:
                a = f["data/demo_0/actions"][()]
                del f["data/demo_0/actions"]
                f["data/demo_0/actions"] = a[:, :5]
        target = str(tmp_path / "never.hdf5")
        assert dataset_main(["extract_action_dict", bad, target]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
        assert not os.path.exists(target) and not os.path.exists(target + ".partial")


class Replay:
    """An acting path returning given (normalized) actions, to check RolloutPolicy's conversion alone."""

    obs_shapes, goal_shapes, device = {}, {}, torch.device("cpu")

    def __init__(self, actions):
        self.actions = torch.as_tensor(np.asarray(actions, np.float32)).reshape(1, -1)  # one environment
        self.ac_dim = self.actions.shape[-1]

    def get_action(self, obs, goal=None):
        return self.actions


@pytest.fixture(scope="module")
def trained(extracted, tmp_path_factory):
    """BC trained 4 steps on pos (min_max) + rot_6d (gaussian) + gripper, with format rot_6d."""
    from conftest import tiny_overrides

    out = tmp_path_factory.mktemp("runs")
    cfg = compose("bc", [f"train.data={extracted[1]}", "train.hdf5_filter_key=train", KEYS,
                         action_config(rot="{normalization:gaussian,format:rot_6d}"), f"train.output_dir={out}",
                         "train.num_epochs=2", "experiment.epoch_every_n_steps=2", "train.batch_size=8",
                         "experiment.logging.log_tb=false", *tiny_overrides("bc")])
    res = train(cfg, progress=False)
    return os.path.join(res["run_dir"], "models", "last.pth")


def test_checkpoint_acts_with_axis_angle(trained):
    """The policy trained on 10-D (pos 3, 6D 6, gripper 1) actions returns the environment's 7-D actions: its raw
    output, un-normalized, with the 6D part projected to a rotation and turned into axis-angle; check_policy_fits
    accepts a 7-D environment and names both widths for another one."""
    policy, ckpt = policy_from_checkpoint(ckpt_path=trained)
    assert policy.policy.ac_dim == 10 and policy.action_dim == 7
    policy.start_episode(3)
    rng = np.random.default_rng(1)
    ob = {k: rng.uniform(-1, 1, (3, 2)) for k in ("pos", "goal_pos", "vel")}
    act = policy(ob, batched_ob=True)
    assert act.shape == (3, 7) and np.all(np.isfinite(act))
    policy.start_episode(3)
    raw = policy.policy.get_action({k: torch.as_tensor(v, dtype=torch.float32) for k, v in ob.items()}).numpy()
    st = ckpt["action_normalization_stats"]
    off = np.concatenate([np.ravel(st[k]["offset"]) for k in ckpt["shape_metadata"]["action_keys"]])
    sc = np.concatenate([np.ravel(st[k]["scale"]) for k in ckpt["shape_metadata"]["action_keys"]])
    un = raw * sc + off
    want = np.concatenate([un[:, :3], Rotation.from_matrix(R.rot_6d_to_matrix(un[:, 3:9])).as_rotvec(), un[:, 9:]], 1)
    np.testing.assert_allclose(act, want, rtol=0, atol=1e-5)
    check_policy_fits(policy, {k: v[0] for k, v in ob.items()}, 7)
    with pytest.raises(RolloutError, match=r"action dim 7 in the checkpoint \(10 before converting rot_6d"):
        check_policy_fits(policy, {k: v[0] for k, v in ob.items()}, 10)


def test_conversion_closed_form_with_checkpoint_stats(trained):
    """Un-normalize first, then convert: a normalized output whose un-normalized 6D part is a 90 degree turn about z
    (scaled by 2 and with a slightly non-orthogonal second row) acts as axis-angle (0, 0, pi/2); with rot_euler as
    Euler XYZ (0, 0, pi/2), and a general Rx(0.3) Ry(-0.2) Rz(0.1) as those three angles."""
    ckpt = load_checkpoint(trained)
    keys, stats = ckpt["shape_metadata"]["action_keys"], ckpt["action_normalization_stats"]
    off = np.concatenate([np.ravel(stats[k]["offset"]) for k in keys])
    sc = np.concatenate([np.ravel(stats[k]["scale"]) for k in keys])
    d6 = 2 * np.array([0.0, -1.0, 0.0, 1.0, 0.05, 0.0])
    raw = np.concatenate([[0.1, -0.2, 0.3], d6, [1.0]])
    st = {k: {n: np.asarray(v, np.float32) for n, v in d.items()} for k, d in stats.items()}
    cfg = checkpoint_action_config(ckpt)
    assert cfg["action_dict/rel_rot_6d"] == {"normalization": "gaussian", "format": "rot_6d"}
    p = RolloutPolicy(Replay((raw - off) / sc), None, st, keys, cfg)
    np.testing.assert_allclose(p({}), [0.1, -0.2, 0.3, 0, 0, np.pi / 2, 1.0], atol=2e-6)
    euler = {**cfg, "action_dict/rel_rot_6d": {**cfg["action_dict/rel_rot_6d"], "convert_at_runtime": "rot_euler"}}
    np.testing.assert_allclose(RolloutPolicy(Replay((raw - off) / sc), None, st, keys, euler)({}),
                               [0.1, -0.2, 0.3, 0, 0, np.pi / 2, 1.0], atol=2e-6)
    M = R.euler_xyz_to_matrix([0.3, -0.2, 0.1])
    raw2 = np.concatenate([[0, 0, 0], M[:2].ravel(), [-1.0]])
    np.testing.assert_allclose(RolloutPolicy(Replay((raw2 - off) / sc), None, st, keys, euler)({})[3:6],
                               [0.3, -0.2, 0.1], atol=2e-6)


def test_old_checkpoint_without_action_config_acts_as_before(trained):
    """A checkpoint whose config has no train.action_config (older modmimic) returns the 10-D un-normalized actions
    as it always did."""
    ckpt = load_checkpoint(trained)
    ckpt["config"]["train"].pop("action_config")
    policy, _ = policy_from_checkpoint(ckpt_dict=ckpt)
    assert policy.action_dim == 10
    policy.start_episode(1)
    assert policy({"pos": np.zeros(2), "goal_pos": np.ones(2), "vel": np.zeros(2)}).shape == (10,)


def test_bad_action_formats_are_config_errors(extracted, trained, tiny):
    path = extracted[1]
    base = [f"train.data={path}", "train.hdf5_filter_key=train", KEYS, *tiny("bc")]
    with pytest.raises(ConfigError, match=r"action_dict/rel_pos\.format is rot_6d, but action key "
                                          r"'action_dict/rel_pos' has 3 dims") as e:
        build_data(with_data(compose("bc", base + [action_config(pos="{normalization:null,format:rot_6d}")])))
    assert "\n" not in str(e.value)  # one paragraph
    with pytest.raises(ConfigError, match=r"action_dict/rel_rot_6d\.convert_at_runtime is 'rot_quat'"):
        build_data(with_data(compose("bc", base + [action_config(
            rot="{normalization:null,format:rot_6d,convert_at_runtime:rot_quat}")])))
    with pytest.raises(ConfigError, match=r"action_dict/rel_rot_6d\.format is 'rot6d'"):
        build_data(with_data(compose("bc", base + [action_config(rot="{format:rot6d}")])))
    with pytest.raises(ConfigError, match=r"action_dict/rel_rot_6d has unknown fields \['convert'\]"):
        build_data(with_data(compose("bc", base + [action_config(rot="{format:rot_6d,convert:rot_euler}")])))
    # the same checks when acting: RolloutPolicy directly, and a checkpoint whose config was edited
    st = {"a": {"offset": np.zeros((1, 4), np.float32), "scale": np.ones((1, 4), np.float32)}}
    with pytest.raises(ConfigError, match="action key 'a' has 4 dims"):
        RolloutPolicy(Replay(np.zeros(4)), None, st, ["a"], {"a": {"format": "rot_6d"}})
    ckpt = load_checkpoint(trained)
    ckpt["config"]["train"]["action_config"]["action_dict/rel_rot_6d"]["convert_at_runtime"] = "quaternion"
    with pytest.raises(CheckpointError, match="convert_at_runtime is 'quaternion'"):
        policy_from_checkpoint(ckpt_dict=ckpt)


def test_train_cli_rot_6d_width_error_is_exit_2(extracted, tmp_path, capsys):
    from modmimic.train import main

    code = main([f"dataset={extracted[1]}", f"train.output_dir={tmp_path / 'out'}", "train.num_epochs=1",
                 "observation.modalities.obs.low_dim=[pos,goal_pos,vel]", "experiment.rollout.enabled=false",
                 "experiment.epoch_every_n_steps=1", KEYS, action_config(pos="{format:rot_6d}")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "action_dict/rel_pos" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out")


def test_diffusion_policy_trains_on_extracted_rot_6d(extracted, tmp_path, tiny):
    """The README's use: Diffusion Policy on abs_pos (min_max) + abs_rot_6d + gripper composes, trains and acts with
    7-D actions."""
    cfg = compose("diffusion_policy", [
        f"train.data={extracted[1]}", "train.hdf5_filter_key=train", f"train.output_dir={tmp_path}",
        "train.action_keys=[action_dict/abs_pos,action_dict/abs_rot_6d,action_dict/gripper]",
        "+train.action_config={action_dict/abs_pos:{normalization:min_max},"
        "action_dict/abs_rot_6d:{normalization:null,format:rot_6d},action_dict/gripper:{normalization:null}}",
        "train.num_epochs=1", "experiment.epoch_every_n_steps=2", "train.batch_size=4",
        "experiment.logging.log_tb=false", *tiny("diffusion_policy")])
    res = train(cfg, progress=False)
    policy, _ = policy_from_checkpoint(ckpt_path=os.path.join(res["run_dir"], "models", "last.pth"))
    policy.start_episode(2)
    act = policy({k: np.zeros((2, 2)) for k in ("pos", "goal_pos", "vel")}, batched_ob=True)
    assert act.shape == (2, 7) and np.all(np.isfinite(act)) and np.all(np.linalg.norm(act[:, 3:6], axis=1) <= np.pi)


def test_lift_demos_extract_exactly(tmp_path):
    """On the embedded robosuite Lift demos (200 demos, 9847 steps of 7-D OSC actions): 6D -> axis-angle gives back
    every stored Δaxis-angle (measured max error 6e-16)."""
    from modmimic.data.default import default_dataset_path

    out = str(tmp_path / "lift_dict.hdf5")
    extract_action_dict(default_dataset_path(), out)
    with h5py.File(out, "r") as f:
        err = max(np.abs(R.rot_6d_to_axis_angle(f["data"][d]["action_dict/rel_rot_6d"][()])
                         - f["data"][d]["actions"][()][:, 3:6]).max() for d in f["data"])
    assert err < 1e-12


@pytest.mark.slow
def test_rot_6d_policy_rolls_out_in_lift(tmp_path):
    """BC trained 3 steps on Lift's rel_pos + rel_rot_6d + gripper (10-D) acts in robosuite's Lift, whose OSC
    controller takes 7-D actions (the adapter refuses any other width): 2 episodes of 10 steps (about 20 s)."""
    pytest.importorskip("robosuite", reason="simulator extra not installed (pip install -e '.[sim]')")
    from modmimic.data.default import default_dataset_path
    from modmimic.eval import evaluate

    out = str(tmp_path / "lift_dict.hdf5")
    extract_action_dict(default_dataset_path(), out)
    cfg = compose("bc", [f"train.data={out}", f"train.output_dir={tmp_path}", "train.num_epochs=1",
                         "experiment.epoch_every_n_steps=3", "experiment.rollout.enabled=false",
                         "experiment.logging.log_tb=false", KEYS,
                         "+train.action_config={action_dict/rel_rot_6d:{normalization:null,format:rot_6d}}"])
    r = train(cfg, progress=False)
    s = evaluate(os.path.join(r["run_dir"], "models", "last.pth"), episodes=2, num_envs=1, horizon=10)
    assert s["Num_Episodes"] == 2 and s["Horizon"] == 10
