"""Co-training on several datasets (robomimic ``MetaDataset``) and action dictionaries with per-key normalization
(robomimic ``train.action_keys`` / ``train.action_config``)."""
import json
import os

import h5py
import numpy as np
import pytest
import torch

from modmimic import keys as K
from modmimic.config import ConfigError, compose
from modmimic.data.synthetic import make_reach_dataset, write_robomimic_hdf5
from modmimic.policy import RolloutPolicy, load_checkpoint, policy_from_checkpoint
from modmimic.trainer import build_data, resume_config, train, with_data

from test_trainer import assert_same_state

OBS = ["observation.modalities.obs.low_dim=[pos,goal_pos,vel]", "experiment.rollout.enabled=false"]
ACTION_DICT = ["train.action_keys=[action_dict/gripper,action_dict/pos,action_dict/rot]",
               "+train.action_config={action_dict/pos:{normalization:min_max},"
               "action_dict/rot:{normalization:gaussian},action_dict/gripper:{normalization:null}}"]


def write_set(path, n_demos, seed, length=12, shift=0.0, drop=None):
    """Demos with obs pos/goal_pos/vel, ``actions`` (2-D) and ``action_dict/{pos (2-D, in [-3, 5] + shift), rot
    (3-D, gaussian-ish), gripper (1-D, +-1)}``; masks train/valid (every 4th demo valid). ``drop``: (demo, key) to
    leave out."""
    rng = np.random.default_rng(seed)
    demos = []
    for i in range(n_demos):
        T = length + i % 3
        pos = rng.uniform(-1, 1, (T, 2)) + shift
        d = {"obs": {"pos": pos, "goal_pos": rng.uniform(-1, 1, (T, 2)), "vel": rng.normal(0, 0.1, (T, 2))},
             "actions": rng.uniform(-1, 1, (T, 2)), "rewards": np.zeros(T), "dones": (np.arange(T) == T - 1) * 1,
             "action_dict/pos": rng.uniform(-3, 5, (T, 2)) + shift,
             "action_dict/rot": rng.normal(2.0, 3.0, (T, 3)),
             "action_dict/gripper": np.where(rng.random((T, 1)) < 0.5, -1.0, 1.0)}
        if drop is not None and drop[0] == i:
            del d[drop[1]]
        demos.append(d)
    names = [f"demo_{i}" for i in range(n_demos)]
    write_robomimic_hdf5(str(path), demos, masks={"train": [n for i, n in enumerate(names) if i % 4 != 3],
                                                  "valid": [n for i, n in enumerate(names) if i % 4 == 3]})
    return str(path)


def read_split(path, key, mask="train"):
    with h5py.File(path, "r") as f:
        names = sorted((n.decode() for n in f["mask"][mask][()]), key=lambda n: int(n[5:]))
        return np.concatenate([f["data"][n][key][()].reshape(f["data"][n][key].shape[0], -1) for n in names])


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    d = tmp_path_factory.mktemp("cotrain")
    return [write_set(d / "a.hdf5", 8, 0), write_set(d / "b.hdf5", 4, 1, shift=2.0),
            write_set(d / "c.hdf5", 12, 2, length=5, shift=-1.0)]


def data_list(paths, weights):
    return "train.data=[" + ",".join(f"{{path:'{p}',weight:{w}}}" for p, w in zip(paths, weights)) + "]"


@pytest.mark.parametrize("by_size", [True, False])
def test_sampling_proportions_and_rows(three, tiny, by_size):
    """Weights 1:2:1 over 20k rows: per dataset (normalize_weights_by_ds_size) or per window (robomimic's default,
    dataset share = weight x windows); every row is the window its global index names."""
    cfg = compose("bc", [data_list(three, [1, 2, 1]), "train.batch_size=500", "train.hdf5_filter_key=train",
                         f"train.normalize_weights_by_ds_size={str(by_size).lower()}", *tiny("bc")])
    data = build_data(with_data(cfg))
    s = data.train_sampler
    sizes = np.array([len(c) for c in s.samplers], dtype=float)
    assert len(s) == sizes.sum() and data.names == ["a", "b", "c"]
    w = np.array([1.0, 2.0, 1.0]) * (1 if by_size else sizes)
    p = w / w.sum()
    counts = np.zeros(3)
    starts = np.cumsum([0] + sizes.tolist())
    for _ in range(40):
        b = s.sample()
        idx = b[K.INDEX][:, 0]
        ds = np.searchsorted(starts, idx.numpy(), side="right") - 1
        counts += np.bincount(ds, minlength=3)
        for i in range(3):  # the row's raw observation is the store's row of that window
            rows = torch.as_tensor(ds == i)
            if rows.any():
                c = s.samplers[i]
                local = idx[rows] - int(starts[i])
                a, bb, _ = c.store.columns[K.obs("pos")]
                assert torch.equal(b[K.obs("pos")][rows, 0], c.store.flat[c.starts[local], a:bb])
    n = counts.sum()
    assert n == 20000
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) < 3 * sigma), (counts / n, p)


def test_merged_statistics_equal_concatenated_data(three, tiny):
    cfg = compose("bc", [data_list(three[:2], [1, 3]), "train.hdf5_filter_key=train", "train.hdf5_normalize_obs=true",
                         *ACTION_DICT, *tiny("bc")])
    data = build_data(with_data(cfg))
    for k in ("pos", "goal_pos", "vel"):
        x = np.concatenate([read_split(p, f"obs/{k}") for p in three[:2]])
        st = data.obs_normalization_stats[k]
        np.testing.assert_allclose(st["offset"], x.mean(0, keepdims=True), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st["scale"], x.std(0, keepdims=True) + 1e-3, rtol=1e-6, atol=1e-6)
    acts = {k: np.concatenate([read_split(p, f"action_dict/{k}") for p in three[:2]]) for k in ("pos", "rot")}
    mm = data.action_normalization_stats["action_dict/pos"]
    lo, hi = acts["pos"].min(0), acts["pos"].max(0)
    np.testing.assert_allclose(mm["scale"][0], (hi - lo) / (2 * 0.999999), rtol=1e-6)
    np.testing.assert_allclose(mm["offset"][0], lo + (hi - lo) / 2, rtol=1e-6, atol=1e-6)
    g = data.action_normalization_stats["action_dict/rot"]
    np.testing.assert_allclose(g["offset"][0], acts["rot"].mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g["scale"][0], acts["rot"].std(0), rtol=1e-6)
    grip = data.action_normalization_stats["action_dict/gripper"]
    assert np.all(grip["offset"] == 0) and np.all(grip["scale"] == 1)


class Replay:
    """An acting path that returns given (normalized) actions, to check RolloutPolicy's un-normalization alone."""

    obs_shapes, goal_shapes, device = {}, {}, torch.device("cpu")

    def __init__(self, actions):
        self.actions = actions

    def get_action(self, obs, goal=None):
        return self.actions


def test_action_keys_order_and_normalization_round_trip(three, tiny):
    """Actions = action_dict/{gripper, pos, rot} concatenated in that (configured) order, each normalized by its mode
    (min_max into [-0.999999, 0.999999], gaussian to mean 0 / std 1, null untouched); RolloutPolicy's
    un-normalization returns the raw actions. A constant dimension (min_max range < 1e-4) is centred and round trips."""
    path = three[0]
    cfg = compose("bc", [f"train.data={path}", "train.hdf5_filter_key=train", *ACTION_DICT, *tiny("bc")])
    data = build_data(with_data(cfg))
    assert data.ac_dim == 6
    s = data.train_sampler
    b = s.gather(torch.arange(len(s)))
    raw = s.store.flat[s.starts, slice(*s.store.columns[K.ACTION][:2])].double().numpy()
    want = np.concatenate([read_split(path, f"action_dict/{k}") for k in ("gripper", "pos", "rot")], 1)
    np.testing.assert_array_equal(raw, want.astype(np.float32))
    normed = b[K.ACTION][:, 0].double().numpy()
    np.testing.assert_array_equal(normed[:, 0], raw[:, 0])  # gripper: null
    np.testing.assert_allclose(normed[:, 1:3].min(0), -0.999999, atol=1e-6)
    np.testing.assert_allclose(normed[:, 1:3].max(0), 0.999999, atol=1e-6)
    np.testing.assert_allclose(normed[:, 3:].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(normed[:, 3:].std(0), 1, atol=1e-5)
    policy = RolloutPolicy(Replay(b[K.ACTION][:, 0]), None, data.action_normalization_stats,
                           list(cfg.train.action_keys))
    np.testing.assert_allclose(policy({}, batched_ob=True), raw, rtol=0, atol=1e-6)

    from modmimic.data import stats as S
    const = np.full((7, 2), 0.3)
    const[:, 1] = np.linspace(-2, 4, 7)
    st = {"k": S.action_stats_from_moments(S.moments(const), "min_max")}
    n = (const - st["k"]["offset"]) / st["k"]["scale"]
    assert np.allclose(n[:, 0], 0, atol=1e-6) and np.isclose(n[:, 1].min(), -0.999999) and np.isclose(n[:, 1].max(), 0.999999)
    back = RolloutPolicy(Replay(torch.as_tensor(n, dtype=torch.float32)), None, st, ["k"])({}, batched_ob=True)
    np.testing.assert_allclose(back, const, atol=1e-6)


def test_missing_action_key_is_exit_2(tmp_path, capsys):
    from modmimic.train import main

    path = write_set(tmp_path / "gap.hdf5", 5, 0, drop=(2, "action_dict/rot"))
    code = main([f"dataset={path}", f"train.output_dir={tmp_path / 'out'}", "train.num_epochs=1", *OBS,
                 "experiment.epoch_every_n_steps=1", *ACTION_DICT])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "data/demo_2/action_dict/rot is missing" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out")


def test_bad_data_lists(three, tiny):
    for bad, msg in (("train.data=[{path:a.hdf5,weight:0}]", "weight must be a positive"),
                     ("train.data=[{path:a.hdf5,wieght:2}]", "unknown keys \\['wieght'\\]"),
                     ("train.data=[{filter_key:train}]", "dict with a 'path'")):
        with pytest.raises(ConfigError, match=msg):
            build_data(compose("bc", [bad, *tiny("bc")]))
    with pytest.raises(ConfigError, match="not in train.action_keys"):
        build_data(compose("bc", [f"train.data={three[0]}", "+train.action_config={action_dict/typo:"
                                  "{normalization:min_max}}", *tiny("bc")]))


def test_cotraining_run_resumes_bit_exact(three, tmp_path, tiny):
    """2 datasets: per-dataset validation logged, 2 epochs + resume == 4 epochs bit for bit, the checkpoint keeps the
    list and the pooled action statistics, and policy_from_checkpoint acts with them."""
    common = [data_list(three[:2], [1, 2]), f"train.output_dir={tmp_path}", "train.batch_size=8",
              "experiment.epoch_every_n_steps=3", "experiment.validate=true", "train.hdf5_filter_key=train",
              "train.hdf5_validation_filter_key=valid", "experiment.validation_epoch_every_n_steps=2",
              "experiment.logging.log_tb=false", "train.num_epochs=4", "train.hdf5_normalize_obs=true",
              *ACTION_DICT, *tiny("bc")]
    full = train(compose("bc", common + ["experiment.name=full"]), progress=False)
    part = train(compose("bc", common + ["experiment.name=part", "train.stop_after_epoch=2"]), progress=False)
    resumed = train(resume_config(part["run_dir"], ["train.stop_after_epoch=null"]), progress=False)
    assert resumed["epoch"] == 4
    a = load_checkpoint(os.path.join(full["run_dir"], "models", "last.pth"))
    b = load_checkpoint(os.path.join(resumed["run_dir"], "models", "last.pth"))
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["trainer_state"]["samplers"], b["trainer_state"]["samplers"])
    la = [json.loads(x) for x in open(os.path.join(full["run_dir"], "logs", "metrics.jsonl"))]
    lb = [json.loads(x) for x in open(os.path.join(resumed["run_dir"], "logs", "metrics.jsonl"))]
    for ra, rb in zip(la, lb):
        for k in ("Train/Loss", "Valid/Loss", "Valid/a/Loss", "Valid/b/Loss"):
            assert ra[k] == rb[k], k
    assert la[0]["Valid/a/Loss"] != la[0]["Valid/b/Loss"]
    data = a["config"]["train"]["data"]
    assert [d["path"] for d in data] == three[:2] and [d["weight"] for d in data] == [1, 2]
    cfg = with_data(compose("bc", common))
    stats = build_data(cfg).action_normalization_stats
    for k, st in stats.items():
        for n in ("offset", "scale"):
            np.testing.assert_array_equal(np.asarray(a["action_normalization_stats"][k][n], np.float32), st[n])
    policy, _ = policy_from_checkpoint(ckpt_path=os.path.join(full["run_dir"], "models", "last.pth"))
    policy.start_episode(2)
    act = policy({"pos": np.zeros((2, 2)), "goal_pos": np.ones((2, 2)), "vel": np.zeros((2, 2))}, batched_ob=True)
    assert act.shape == (2, 6) and np.all(np.isfinite(act))
    assert np.all(np.abs(act[:, 0]) <= 1.0 + 1e-6)  # gripper: not normalized, tanh output
    lo = np.asarray(stats["action_dict/pos"]["offset"]) - 0.999999 * np.asarray(stats["action_dict/pos"]["scale"])
    hi = np.asarray(stats["action_dict/pos"]["offset"]) + 0.999999 * np.asarray(stats["action_dict/pos"]["scale"])
    assert np.all(act[:, 1:3] >= lo - 1e-5) and np.all(act[:, 1:3] <= hi + 1e-5)  # un-normalized into the data range
