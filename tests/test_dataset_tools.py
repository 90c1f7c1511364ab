"""Dataset tools robomimic and LeRobot users reach for: merge, filter, and info of LeRobotDataset folders."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from modmimic.data.hdf5 import list_demos
from modmimic.data.synthetic import make_reach_dataset, write_robomimic_hdf5
from modmimic.dataset import main

ENV = {"env_name": "PointReach", "type": 2, "env_version": "0", "env_kwargs": {"dim": 2, "max_len": 20}}


def contents(path):
    """Every dataset (as bytes) and attribute of a file, by path."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            out[name] = (obj[()].tobytes() if isinstance(obj, h5py.Dataset) else None, json.dumps(attrs, default=str))
        f.visititems(visit)
        out["/"] = (None, json.dumps({k: np.asarray(v).tolist() for k, v in f.attrs.items()}, default=str))
    return out


def masks(path):
    with h5py.File(path, "r") as f:
        return {k: [n.decode() for n in f["mask"][k][()]] for k in f["mask"]}


@pytest.fixture
def two(tmp_path):
    a, b = str(tmp_path / "a.hdf5"), str(tmp_path / "b.hdf5")
    make_reach_dataset(a, n_demos=5, seed=0, max_len=20)
    make_reach_dataset(b, n_demos=3, seed=1, max_len=20)
    for p, extra in ((a, "x"), (b, "y")):
        with h5py.File(p, "r+") as f:
            f["data"].attrs["robot"] = "point"
            f.attrs["source"] = "synthetic"
            f["data/demo_0"].attrs["note"] = extra
            f.create_dataset("mask/only_" + extra, data=np.array(["demo_1"], dtype="S"))
    return a, b


def test_merge_keeps_demos_masks_env_and_attributes(two, tmp_path, capsys):
    a, b = two
    out = str(tmp_path / "ab.hdf5")
    assert main(["merge", a, b, "-o", out]) == 0
    assert "wrote 8 demos" in capsys.readouterr().out
    ca, cb, co = contents(a), contents(b), contents(out)
    for src, offset, n in ((ca, 0, 5), (cb, 5, 3)):  # every dataset and attribute of every demo, renumbered
        for i in range(n):
            for name, value in src.items():
                if name.startswith(f"data/demo_{i}/") or name == f"data/demo_{i}":
                    assert co[name.replace(f"demo_{i}", f"demo_{offset + i}", 1)] == value, name
    ma, mb, mo = masks(a), masks(b), masks(out)
    shift = lambda names, k: [f"demo_{int(n[5:]) + k}" for n in names]  # noqa: E731
    assert mo["train"] == ma["train"] + shift(mb["train"], 5) and mo["valid"] == ma["valid"] + shift(mb["valid"], 5)
    assert mo["only_x"] == ["demo_1"] and mo["only_y"] == ["demo_6"]
    with h5py.File(out, "r") as f, h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert json.loads(f["data"].attrs["env_args"]) == json.loads(fa["data"].attrs["env_args"])
        assert f["data"].attrs["total"] == fa["data"].attrs["total"] + fb["data"].attrs["total"]
        assert f["data"].attrs["robot"] == "point" and f.attrs["source"] == "synthetic"
    assert main(["info", out]) == 0  # training's checks pass on the merged file
    assert main(["merge", a, b, "-o", out]) == 2 and "exists" in capsys.readouterr().err  # never replaced


@pytest.mark.parametrize("edit,says", [
    (lambda f: f["data"].attrs.__setitem__("env_args", json.dumps({**ENV, "env_name": "Other"})), "env_args"),
    (lambda f: f["data"].attrs.__setitem__("robot", "arm"), "'robot'"),
    (lambda f: f.attrs.__setitem__("source", "human"), "'source'"),
    (lambda f: [f["data"][d].__delitem__("obs/vel") for d in f["data"]], "obs/vel"),
])
def test_merge_conflicts_are_errors_and_write_nothing(two, tmp_path, capsys, edit, says):
    a, b = two
    with h5py.File(b, "r+") as f:
        edit(f)
    out = tmp_path / "ab.hdf5"
    before = sorted(os.listdir(tmp_path))
    assert main(["merge", a, b, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "conflict" in err and says in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == before


def test_merge_bad_inputs(two, tmp_path, capsys):
    a, _ = two
    assert main(["merge", a, "-o", str(tmp_path / "o.hdf5")]) == 2 and "at least two" in capsys.readouterr().err
    assert main(["merge", a, str(tmp_path / "nope.hdf5"), "-o", str(tmp_path / "o.hdf5")]) == 2
    assert "nope.hdf5" in capsys.readouterr().err
    assert main(["merge", a, a, "-o", a]) == 2 and "also an input" in capsys.readouterr().err


@pytest.fixture
def graded(tmp_path):
    """Six demos with known lengths, returns and success (two carry a 'success' attribute that wins)."""
    lengths = [3, 5, 8, 4, 6, 2]
    rewards = [[0, 0, 1], [0] * 5, [0] * 7 + [1], [0.5] * 4, [0] * 6, [1, 1]]
    demos = []
    for i, (T, r) in enumerate(zip(lengths, rewards)):
        d = {"obs": {"x": np.zeros((T, 2))}, "actions": np.zeros((T, 2)), "rewards": np.asarray(r, float),
             "dones": (np.arange(T) == T - 1).astype(int)}
        if i == 4:
            d["attrs"] = {"success": True}  # recorded by a policy whose env says so, without a reward of 1
        if i == 5:
            d["attrs"] = {"success": False}
        demos.append(d)
    path = str(tmp_path / "g.hdf5")
    write_robomimic_hdf5(path, demos, masks={"train": ["demo_0", "demo_1", "demo_2", "demo_3"]})
    return path


@pytest.mark.parametrize("args,expected", [
    (["--success"], [0, 2, 4]),
    (["--failed"], [1, 3, 5]),
    (["--min-return", "1.5"], [3, 5]),
    (["--min-return", "1", "--max-return", "1"], [0, 2]),
    (["--min-length", "4", "--max-length", "6"], [1, 3, 4]),
    (["--demos", "demo_5,demo_1"], [1, 5]),
    (["--success", "--from-key", "train"], [0, 2]),
    (["--failed", "--min-length", "5"], [1]),
])
def test_filter_writes_exactly_the_demos_meeting_every_criterion(graded, args, expected):
    before = contents(graded)
    assert main(["filter", graded, "--name", "picked", *args]) == 0
    with h5py.File(graded, "r") as f:
        assert list_demos(f, "picked") == [f"demo_{i}" for i in expected]
    after = contents(graded)
    assert {k: v for k, v in after.items() if not k.startswith("mask/picked")} == \
        {k: v for k, v in before.items()}  # nothing else changed


def test_filter_demo_file_overwrite_and_errors(graded, tmp_path, capsys):
    (tmp_path / "list.txt").write_text("demo_2\ndemo_3\n")
    assert main(["filter", graded, "--name", "mine", "--demos", f"@{tmp_path / 'list.txt'}"]) == 0
    assert masks(graded)["mine"] == ["demo_2", "demo_3"]
    assert main(["filter", graded, "--name", "mine", "--success"]) == 2 and "exists" in capsys.readouterr().err
    assert masks(graded)["mine"] == ["demo_2", "demo_3"]
    assert main(["filter", graded, "--name", "mine", "--success", "--overwrite"]) == 0
    assert masks(graded)["mine"] == ["demo_0", "demo_2", "demo_4"]
    for args, says in [([], "needs a criterion"), (["--demos", "demo_9"], "no demo 'demo_9'"),
                       (["--min-return", "100"], "no demo"), (["--success", "--from-key", "nokey"], "nokey")]:
        assert main(["filter", graded, "--name", "other", *args]) == 2
        assert says in capsys.readouterr().err
    assert "other" not in masks(graded)


def test_filter_key_feeds_training(graded):
    from modmimic.config import compose
    from modmimic.trainer import build_data, with_data

    assert main(["filter", graded, "--name", "good", "--success"]) == 0
    cfg = with_data(compose("bc", [f"train.data={graded}", "train.hdf5_filter_key=good",
                                   "observation.modalities.obs.low_dim=[x]", "experiment.rollout.enabled=false"]))
    store = build_data(cfg).train_store
    assert store.demos == ["demo_0", "demo_2", "demo_4"] and store.lengths.tolist() == [3, 8, 6]


# --- info of a LeRobotDataset folder ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def v30(tmp_path_factory):
    pytest.importorskip("pyarrow")
    pytest.importorskip("av")
    from lerobot_layout import episodes_data, write_v30

    root = str(tmp_path_factory.mktemp("lr") / "v30")
    eps = episodes_data([6, 4, 7, 5, 3])
    write_v30(root, eps)
    return root, eps


def test_info_of_a_lerobot_folder(v30, capsys):
    root, eps = v30
    assert main(["info", root, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "LeRobotDataset v3.0" and info["num_demos"] == 5 and info["num_samples"] == 25
    assert info["length"] == {"min": 3, "mean": 5.0, "max": 7}
    keys = info["keys"]
    assert keys["obs/front_image"]["feature"] == "observation.images.front" and keys["obs/front_image"]["dtype"] == "uint8"
    state = np.concatenate([e["state"] for e in eps]) if "state" in eps[0] else None
    if state is not None:
        assert keys["obs/state"]["min"] == pytest.approx(float(state.min()))
        assert keys["obs/state"]["max"] == pytest.approx(float(state.max()))
    actions = np.concatenate([e["action"] for e in eps]) if "action" in eps[0] else None
    if actions is not None:
        assert keys["actions"]["min"] == pytest.approx(float(actions.min()))
    assert info["errors"] == []
    assert main(["info", root]) == 0
    text = capsys.readouterr().out
    assert "LeRobotDataset v3.0" in text and "[observation.images.front, video]" in text


def test_info_of_a_broken_lerobot_folder_is_exit_2(v30, tmp_path, capsys):
    root = str(tmp_path / "bad")
    shutil.copytree(v30[0], root)
    os.unlink(os.path.join(root, "videos/observation.images.front/chunk-000/file-001.mp4"))
    assert main(["info", root]) == 2
    assert "missing video file" in capsys.readouterr().err
    info = os.path.join(root, "meta", "info.json")
    meta = json.load(open(info))
    meta["total_frames"] = 99
    json.dump(meta, open(info, "w"))
    assert main(["info", root]) == 2
    assert "total_frames=99" in capsys.readouterr().err


# --- playback ---------------------------------------------------------------------------------------------------

def read_video(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)])


def test_playback_from_states_renders_each_stored_state(tmp_path, capsys):
    from modmimic.envs import env_from_metadata

    data = tmp_path / "reach.hdf5"
    make_reach_dataset(str(data), n_demos=3, seed=0, max_len=12)
    out = tmp_path / "demo.mp4"
    assert main(["playback", str(data), "-o", str(out), "--demos", "demo_0,demo_2", "--size", "64"]) == 0
    assert "from states" in capsys.readouterr().out
    frames = read_video(out)
    env = env_from_metadata(ENV | {"env_kwargs": {"dim": 2, "max_len": 12}})
    with h5py.File(data, "r") as f:
        states = np.concatenate([f["data/demo_0/states"][()], f["data/demo_2/states"][()]])
    assert frames.shape == (len(states), 64, 64, 3)
    for t in (0, len(states) // 2, len(states) - 1):  # the frame is the state's rendering (H.264 tolerance)
        env.reset_to({"states": states[t]})
        ref = env.render(64, 64).astype(float)
        assert np.abs(frames[t].astype(float) - ref).mean() < 6.0
    assert main(["playback", str(data), "-o", str(out)]) == 2 and "exists" in capsys.readouterr().err


def test_playback_from_stored_images(tmp_path, capsys):
    T = 5
    yy, xx = np.mgrid[0:32, 0:32]
    imgs = np.stack([np.stack([(xx * 8 + 20 * t) % 256, yy * 8, np.full_like(xx, 60 * t % 256)], -1)
                     for t in range(T)]).astype(np.uint8)
    path = tmp_path / "img.hdf5"
    write_robomimic_hdf5(str(path), [{"obs": {"agentview_image": imgs, "x": np.zeros((T, 1))},
                                      "actions": np.zeros((T, 2)), "rewards": np.zeros(T), "dones": np.zeros(T)}])
    out = tmp_path / "img.mp4"
    assert main(["playback", str(path), "-o", str(out)]) == 0
    frames = read_video(out)
    assert frames.shape == imgs.shape and np.abs(frames.astype(float) - imgs).mean() < 8.0
    assert main(["playback", str(path), "-o", str(tmp_path / "x.mp4"), "--camera", "wrist"]) == 2
    assert "wrist" in capsys.readouterr().err
    assert main(["playback", str(path), "-o", str(tmp_path / "x.mp4"), "--from", "states"]) == 2
    assert "states is missing" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
