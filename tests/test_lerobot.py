"""LeRobotDataset folders as training data and the dataset converters (issue 25, items 1-4).

Readers are checked against folders written independently of modmimic's converter (``tests/lerobot_layout.py``,
LeRobot's published layout; LeRobot's own writer cannot be installed beside the CPU torch, see that file) and, for
Minari, against a dataset written by ``minari.DataCollector``."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from lerobot_layout import FPS, decode_all, episodes_data, write_v21, write_v30  # noqa: E402

from modmimic import keys as K  # noqa: E402
from modmimic.data import convert as V  # noqa: E402
from modmimic.config import compose  # noqa: E402
from modmimic.data.convert import lerobot_to_robomimic, robomimic_to_lerobot, split_episodes  # noqa: E402
from modmimic.data.hdf5 import DatasetError, load_episode_store  # noqa: E402
from modmimic.data.sampler import WindowSampler  # noqa: E402
from modmimic.data.synthetic import write_robomimic_hdf5  # noqa: E402
from modmimic.dataset import main as dataset_main  # noqa: E402
from modmimic.trainer import build_data, train, with_data  # noqa: E402

LENGTHS = [6, 4, 7, 5, 3]
KEYS = ["state", "environment_state", "front_image", "wrist_image"]


@pytest.fixture(scope="module")
def eps():
    return episodes_data(LENGTHS)


@pytest.fixture(scope="module")
def v30(tmp_path_factory, eps):
    root = str(tmp_path_factory.mktemp("lr") / "v30")
    return root, write_v30(root, eps)


@pytest.fixture(scope="module")
def v21(tmp_path_factory, eps):
    root = str(tmp_path_factory.mktemp("lr") / "v21")
    return root, write_v21(root, eps)


def reference_frames(where, cam, e, L):
    path, start, _ = where[(cam, e)]
    return decode_all(path)[start:start + L]


def check_store(store, eps, where, ids, next_obs=True):
    """Every row of ``store`` equals the source arrays (low-dim exactly, video frames equal to an independent PyAV
    decode of the right span of the right file); next observations shifted with the last repeated."""
    assert store.demos == [f"demo_{e}" for e in ids]
    assert store.lengths.tolist() == [LENGTHS[e] for e in ids]
    assert store.tasks == [eps[e]["task"] for e in ids]
    for e, o, L in zip(ids, store.offsets.tolist(), store.lengths.tolist()):
        rows = torch.arange(o, o + L)
        d = eps[e]

        def col(key):
            a, b, shape = store.columns[key]
            return store.flat[rows, a:b].numpy().reshape(L, *shape)

        np.testing.assert_array_equal(col(K.obs("state")), d["state"])
        np.testing.assert_array_equal(col(K.obs("environment_state")), d["env"])
        np.testing.assert_array_equal(col(K.ACTION), d["action"])
        np.testing.assert_array_equal(col(K.REWARD)[:, 0], d["reward"])
        np.testing.assert_array_equal(col(K.DONE)[:, 0], d["done"].astype(np.float32))
        if next_obs:
            np.testing.assert_array_equal(col(K.next_obs("state")), np.concatenate([d["state"][1:], d["state"][-1:]]))
        for cam in ("front", "wrist"):
            ref = reference_frames(where, cam, e, L)
            got = store.uint8[K.obs(f"{cam}_image")][rows].numpy()
            np.testing.assert_array_equal(got, ref)
            assert np.abs(got.astype(int) - d["images"][cam]).mean() < 6  # lossy video, close to the source
            if next_obs:
                np.testing.assert_array_equal(store.uint8[K.next_obs(f"{cam}_image")][rows].numpy(),
                                              np.concatenate([ref[1:], ref[-1:]]))


def test_v30_store_exact(v30, eps):
    root, where = v30
    check_store(load_episode_store(root, KEYS), eps, where, range(5))
    store = load_episode_store(root, KEYS, filter_key="valid", load_next_obs=False)
    check_store(store, eps, where, [4], next_obs=False)


def test_video_workers_start_clean_after_this_process_decoded_video(v30, tmp_path):
    """The store decodes videos in worker threads. Workers forked from a process that had decoded a video with PyAV
    (the test before, a playback) inherited FFmpeg's thread pool without its threads and waited forever (av 18.1.1;
    CI timed out); spawned ones re-ran the user's script below, which has no ``__main__`` guard, and failed. The
    script runs in a subprocess, so that a hang is a timeout, not a stuck run."""
    import subprocess
    import sys

    root, where = v30
    script = tmp_path / "load.py"
    script.write_text(f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                      "from lerobot_layout import decode_all\nfrom modmimic.data.hdf5 import load_episode_store\n"
                      f"decode_all({where[('front', 0)][0]!r})\n"
                      f"s = load_episode_store({root!r}, {KEYS!r}, load_next_obs=False)\nprint(len(s.demos))\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.split()[-1] == "5", r.stderr[-2000:]


def test_v21_store_exact(v21, eps):
    root, where = v21
    check_store(load_episode_store(root, KEYS), eps, where, range(5))


def test_memmap_store_equals_ram_and_is_reused(v30, tmp_path):
    root, _ = v30
    ram = load_episode_store(root, KEYS)
    mm = load_episode_store(root, KEYS, memmap_dir=str(tmp_path))
    again = load_episode_store(root, KEYS, memmap_dir=str(tmp_path))
    assert not mm.memmap_reused and again.memmap_reused and again.memmap_path == mm.memmap_path
    assert torch.equal(ram.flat, again.flat[:]) and ram.columns == again.columns
    for k, t in ram.uint8.items():
        assert torch.equal(again.uint8[k][torch.arange(ram.num_samples)], t)
    for k in ram.obs_moments:
        np.testing.assert_array_equal(ram.obs_moments[k]["mean"], again.obs_moments[k]["mean"])


def test_state_split_by_names_and_key_errors(v30, eps):
    root, _ = v30
    store = load_episode_store(root, ["x", "z"], load_next_obs=False)
    a, b, shape = store.columns[K.obs("z")]
    assert shape == (1,)
    np.testing.assert_array_equal(store.flat[:LENGTHS[0], a:b].numpy()[:, 0], eps[0]["state"][:, 2])
    with pytest.raises(DatasetError, match="observation key 'nope' not found.*available"):
        load_episode_store(root, ["nope"])
    with pytest.raises(DatasetError, match="filter key 'test' is not a split"):
        load_episode_store(root, ["state"], filter_key="test")
    with pytest.raises(DatasetError, match="one action vector"):
        load_episode_store(root, ["state"], action_keys=["action_dict/pos"])


def windows(store, **kw):
    s = WindowSampler(store, 4, shuffle=False, **kw)
    return s.gather(torch.arange(len(s)))


@pytest.mark.parametrize("lossless", [True, False])
def test_robomimic_round_trip_windows_equal(tmp_path, lossless):
    """robomimic HDF5 -> LeRobot -> robomimic HDF5: the windows (frame stack, sequence, padding) equal the
    original's (images exactly with --lossless, within the video tolerance otherwise); next observations equal
    except at each demo's last step, which LeRobot does not store."""
    rng = np.random.default_rng(1)
    from lerobot_layout import frame

    demos = []
    for d, L in enumerate([7, 5, 9, 4]):
        pos = rng.standard_normal((L + 1, 2)).astype(np.float32)
        quat = rng.standard_normal((L + 1, 4)).astype(np.float32)
        demos.append({"obs": {"pos": pos[:L], "quat": quat[:L],
                              "agentview_image": np.stack([frame(0, d, t) for t in range(L)])},
                      "next_obs": {"pos": pos[1:], "quat": quat[1:],
                                   "agentview_image": np.stack([frame(0, d, t + 1) for t in range(L)])},
                      "actions": rng.uniform(-1, 1, (L, 3)).astype(np.float32),
                      "rewards": (np.arange(L) == L - 1).astype(np.float32),
                      "dones": (np.arange(L) == L - 1).astype(np.int64)})
    src = str(tmp_path / "src.hdf5")
    write_robomimic_hdf5(src, demos, masks={"train": ["demo_0", "demo_2", "demo_3"], "valid": ["demo_1"]})
    lr, back = str(tmp_path / "lr"), str(tmp_path / "back.hdf5")
    robomimic_to_lerobot(src, lr, lossless=lossless)
    lerobot_to_robomimic(lr, back)
    keys = ["pos", "quat", "agentview_image"]
    with open(os.path.join(lr, "meta", "info.json")) as f:
        info = json.load(f)
    assert info["splits"] == {"train": [0, 2, 3], "valid": "1:2"}
    assert info["robomimic_env_args"]["env_name"] == "Synthetic"
    for path in (lr, back):
        for split in ("train", "valid"):
            a = load_episode_store(src, keys, filter_key=split, load_next_obs=False)
            b = load_episode_store(path, keys, filter_key=split, load_next_obs=False)
            assert a.demos == b.demos and a.columns == b.columns
            for kw in ({"seq_length": 3, "frame_stack": 2}, {"seq_length": 1, "frame_stack": 1},
                       {"seq_length": 4, "pad_seq_length": False}):
                wa, wb = windows(a, **kw), windows(b, **kw)
                assert set(wa.keys(True, True)) == set(wb.keys(True, True))
                for k in wa.keys(True, True):
                    if k == K.obs("agentview_image") and not lossless:
                        assert (wa[k].int() - wb[k].int()).abs().float().mean() < 6
                    else:
                        assert torch.equal(wa[k], wb[k]), k
    a = load_episode_store(src, keys)
    b = load_episode_store(back, keys)
    last = (b.offsets + b.lengths - 1).tolist()
    keep = torch.tensor([r for r in range(a.num_samples) if r not in last])
    s, e, _ = a.columns[K.next_obs("pos")]
    assert torch.equal(a.flat[keep, s:e], b.flat[keep, s:e])
    with h5py.File(back) as f:
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "Synthetic"
        assert f["data/demo_0/obs/agentview_image"].dtype == np.uint8


def tiny_bc(tiny, data, tmp_path, name, extra=()):
    return compose("bc", [f"train.data={data}", f"train.output_dir={tmp_path}", f"experiment.name={name}",
                          "train.batch_size=8", "train.num_epochs=1", "experiment.epoch_every_n_steps=1",
                          "experiment.logging.log_tb=false", "train.seed=3", "train.hdf5_filter_key=train",
                          *tiny("bc"), *extra])


def first_loss(run_dir):
    with open(os.path.join(run_dir, "logs", "metrics.jsonl")) as f:
        return json.loads(f.readline())["Train/Loss"]


def test_training_from_lerobot_equals_hdf5(reach_hdf5, tmp_path, tiny):
    """Same seed, same first-step loss from the HDF5 and from its LeRobot conversion; co-training mixes both."""
    lr = str(tmp_path / "reach_lr")
    robomimic_to_lerobot(str(reach_hdf5), lr)
    a = train(tiny_bc(tiny, reach_hdf5, tmp_path, "h5"), rollout_fn=None, progress=False)
    b = train(tiny_bc(tiny, lr, tmp_path, "lr"), rollout_fn=None, progress=False)
    assert first_loss(a["run_dir"]) == pytest.approx(first_loss(b["run_dir"]), rel=1e-6, abs=1e-7)
    data = build_data(with_data(tiny_bc(tiny, f"[{reach_hdf5},{lr}]", tmp_path, "mix")))
    assert [len(s.demos) for s in data.train_stores] == [9, 9]
    assert data.names == ["reach", "reach_lr"]
    data.train_sampler.sample()


def test_cli_trains_on_lerobot_folder_without_simulator(v30, tmp_path):
    """A folder that names no simulator trains, and the start-up says there are no rollouts and why."""
    import subprocess
    import sys

    root, _ = v30
    out = subprocess.run([sys.executable, "-m", "modmimic.train", "recipe=bc", f"dataset={root}",
                          "observation.modalities.obs.low_dim=[state,environment_state]", "train.num_epochs=1",
                          "experiment.epoch_every_n_steps=2", "train.batch_size=4", f"train.output_dir={tmp_path}",
                          "experiment.logging.log_tb=false", "algo.actor_layer_dims=[16]"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "rollouts: none" in text and "no env metadata" in text


# --- bad input --------------------------------------------------------------------------------------------------

def broken_copy(v30, tmp_path, edit):
    root = str(tmp_path / "bad")
    shutil.copytree(v30[0], root)
    edit(root)
    return root


def edit_info(fn):
    def edit(root):
        p = os.path.join(root, "meta", "info.json")
        with open(p) as f:
            info = json.load(f)
        fn(info)
        with open(p, "w") as f:
            json.dump(info, f)
    return edit


def both(a, b):
    return lambda root: (a(root), b(root))


def edit_episodes(e, **values):
    def edit(root):
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = os.path.join(root, "meta", "episodes", "chunk-000", "file-000.parquet")
        rows = pq.read_table(p).to_pylist()
        rows[e].update(values)
        pq.write_table(pa.Table.from_pylist(rows), p)
    return edit


def truncate(rel, keep=0.5):
    def edit(root):
        p = os.path.join(root, rel)
        with open(p, "rb") as f:
            data = f.read()
        with open(p, "wb") as f:
            f.write(data[:int(len(data) * keep)])
    return edit


BAD = {
    "corrupt parquet": (truncate("data/chunk-000/file-001.parquet"), "data/chunk-000/file-001.parquet: cannot read"),
    "missing video": (lambda r: os.unlink(os.path.join(r, "videos/observation.images.front/chunk-000/file-001.mp4")),
                      "file-001.mp4: video file not found"),
    "truncated video": (truncate("videos/observation.images.wrist/chunk-000/file-001.mp4", 0.6),
                        "observation.images.wrist/chunk-000/file-001.mp4: "),
    "total_frames": (edit_info(lambda i: i.update(total_frames=99)), "info.json: total_frames=99"),
    "fps": (edit_info(lambda i: i.update(fps=20)), "file-000.parquet: episode 0's timestamps step by 0.1-0.1 s, "
            "not 1/fps = 0.05 s"),
    "episode length": (both(edit_episodes(2, length=8), edit_info(lambda i: i.update(total_frames=26))),
                       "file-000.parquet: episode 2 has 7 rows but the episode table"),
    "unknown codec": (edit_info(lambda i: i["features"]["observation.images.front"]["info"].update(
        {"video.codec": "xvid9"})), "info.json: observation.images.front is encoded with video codec 'xvid9'"),
    "version": (edit_info(lambda i: i.update(codebase_version="v9.9")), "info.json: codebase_version 'v9.9'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_exit_2_and_writes_nothing(v30, tmp_path, capsys, case):
    edit, pattern = BAD[case]
    root = broken_copy(v30, tmp_path, edit)
    out = str(tmp_path / "out.hdf5")
    assert dataset_main(["convert", root, out, "--to", "robomimic", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("modmimic.dataset: error: ")
    import re
    assert re.search(pattern, err), err
    assert not os.path.exists(out) and os.listdir(tmp_path) == ["bad"]
    with pytest.raises(DatasetError, match=pattern):
        load_episode_store(root, KEYS)


def test_convert_never_replaces_without_overwrite(reach_hdf5, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    assert dataset_main(["convert", str(reach_hdf5), str(out), "--to", "lerobot"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert os.listdir(out) == ["keep"]
    assert dataset_main(["convert", str(reach_hdf5), str(out), "--to", "lerobot", "--overwrite"]) == 0
    assert os.path.isfile(out / "meta" / "info.json") and not (out / "keep").exists()


# --- D4RL and Minari --------------------------------------------------------------------------------------------

def f32(x):
    return np.float32(x)


def f32max(path, key):
    with h5py.File(path) as f:
        return np.asarray(f[key][()], np.float32).max()


def test_d4rl_split_on_terminals_and_timeouts(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[3], timeouts[7] = True, True  # episodes [0, 4), [4, 8), and the unfinished [8, 12)
    obs, nxt = rng.standard_normal((n, 5)), rng.standard_normal((n, 5))
    src = str(tmp_path / "d4rl.hdf5")
    with h5py.File(src, "w") as f:
        for k, v in dict(observations=obs, next_observations=nxt, actions=rng.uniform(-1, 1, (n, 2)),
                         rewards=rng.random(n), terminals=terminals, timeouts=timeouts).items():
            f.create_dataset(k, data=v)
    assert split_episodes(terminals, timeouts) == [(0, 4), (4, 8), (8, 12)]
    out = str(tmp_path / "out.hdf5")
    assert dataset_main(["convert", src, out, "--to", "robomimic", "--env-name", "hopper-medium-v2"]) == 0
    with h5py.File(out) as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1", "demo_2"]
        np.testing.assert_array_equal(f["data/demo_1/obs/flat"][()], obs[4:8].astype(np.float32))
        np.testing.assert_array_equal(f["data/demo_1/next_obs/flat"][()], nxt[4:8].astype(np.float32))
        np.testing.assert_array_equal(f["data/demo_0/dones"][()], [0, 0, 0, 1])
        np.testing.assert_array_equal(f["data/demo_1/dones"][()], [0, 0, 0, 0])  # a timeout is not terminal
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "hopper-medium-v2"
    store = load_episode_store(out, ["flat"])
    assert store.lengths.tolist() == [4, 4, 4]
    info = V.episodes_info(src, "D4RL-style HDF5", *V.d4rl_demos(src))  # what `dataset info` prints for it
    assert (info["num_demos"], info["num_samples"], info["keys"]["obs/flat"]["shape"]) == (3, 12, [5])
    assert info["keys"]["actions"]["max"] == pytest.approx(float(f32(f32max(src, "actions"))))
    assert dataset_main(["info", src]) == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_minari_written_by_its_collector(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    pytest.importorskip("jax")  # minari.DataCollector needs it (minari[create])
    import gymnasium as gym

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = minari.DataCollector(gym.make("Pendulum-v1", max_episode_steps=6))
    for seed in range(3):
        env.reset(seed=seed)
        for _ in range(10):
            *_, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                break
    ds = env.create_dataset(dataset_id="pendulum/modmimic-test-v0", algorithm_name="random")
    episodes = list(ds.iterate_episodes())
    out = str(tmp_path / "out.hdf5")
    folder = str(tmp_path / "minari" / "pendulum" / "modmimic-test-v0")
    assert dataset_main(["convert", folder, out, "--to", "robomimic"]) == 0
    with h5py.File(out) as f:
        assert len(f["data"]) == 3
        for i, ep in enumerate(episodes):
            g = f[f"data/demo_{i}"]
            np.testing.assert_array_equal(g["obs/flat"][()], ep.observations[:-1].astype(np.float32))
            np.testing.assert_array_equal(g["next_obs/flat"][()], ep.observations[1:].astype(np.float32))
            np.testing.assert_array_equal(g["actions"][()], ep.actions.astype(np.float32))
            np.testing.assert_array_equal(g["rewards"][()], ep.rewards.astype(np.float32))
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "Pendulum-v1"
    assert load_episode_store(out, ["flat"]).num_samples == 18
    info = V.episodes_info(folder, "Minari dataset", *V.minari_demos(folder))
    assert (info["num_demos"], info["num_samples"], info["env_meta"]["env_name"]) == (3, 18, "Pendulum-v1")
    assert dataset_main(["info", folder]) == 0


def test_experiment_env_names_the_simulator_of_a_folder_without_one(reach_hdf5, tmp_path, tiny):
    """A LeRobot folder whose info.json names no simulator: ``experiment.env=<gymnasium id>`` gives it one, and the
    run rolls out there."""
    from modmimic.config import compose
    from modmimic.trainer import train

    root = str(tmp_path / "reach_lerobot")
    assert dataset_main(["convert", str(reach_hdf5), root, "--to", "lerobot"]) == 0
    info_path = os.path.join(root, "meta", "info.json")
    info = json.load(open(info_path))
    info.pop("robomimic_env_args", None)
    json.dump(info, open(info_path, "w"))
    cfg = compose("bc", [f"train.data={root}", f"train.output_dir={tmp_path}", "train.batch_size=8",
                         "train.num_epochs=1", "experiment.epoch_every_n_steps=2", "experiment.logging.log_tb=false",
                         *[o for o in tiny("bc") if o != "experiment.rollout.enabled=false"],
                         "experiment.env=PointReach", "experiment.rollout.n=2", "experiment.rollout.horizon=5"])
    r = train(cfg, progress=False)
    assert "Rollout/Success_Rate/PointReach" in r["metrics"], sorted(r["metrics"])
