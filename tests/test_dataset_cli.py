"""``python -m modmimic.dataset info|split``: what info reports, and a split that is reproducible and touches
nothing but its two filter keys."""
import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from modmimic.data.synthetic import make_reach_dataset, write_robomimic_hdf5
from modmimic.dataset import main, split_demos


def contents(path, skip_mask=True):
    """Every dataset's bytes and every attribute in the file (except the mask group)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if skip_mask and name.startswith("mask"):
                return
            attrs = {k: np.asarray(v).tobytes() for k, v in obj.attrs.items()}
            out[name] = (np.asarray(obj[()]).tobytes() if isinstance(obj, h5py.Dataset) else None, attrs)
        f.visititems(visit)
        out["/"] = (None, {k: np.asarray(v).tobytes() for k, v in f.attrs.items()})
    return out


def masks(path):
    with h5py.File(path, "r") as f:
        return {k: [n.decode() for n in f["mask"][k][()]] for k in f.get("mask", {})}


@pytest.fixture
def data(reach_hdf5, tmp_path):
    p = tmp_path / "d.hdf5"
    shutil.copy(reach_hdf5, p)
    return p


def test_info(data, capsys):
    assert main(["info", str(data)]) == 0
    out = capsys.readouterr().out
    for s in ["demos:        12", "PointReach", "train (9 demos), valid (3 demos)", "obs/pos", "next_obs/vel",
              "actions", "float64", "action range: OK"]:
        assert s in out
    assert main(["info", str(data), "--json", "--filter-key", "valid"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_demos"] == 3 and info["keys"]["obs/pos"]["shape"] == [2]
    with h5py.File(data) as f:
        n = sum(int(f["data"][d].attrs["num_samples"]) for d in [x.decode() for x in f["mask/valid"][()]])
        lo = min(float(f["data"][d]["actions"][()].min()) for d in [x.decode() for x in f["mask/valid"][()]])
    assert info["num_samples"] == n and info["keys"]["actions"]["min"] == pytest.approx(lo)


def test_info_action_range_check(tmp_path, capsys):
    p = tmp_path / "wide.hdf5"
    T = 5
    demo = {"obs": {"x": np.zeros((T, 3))}, "actions": np.linspace(-3, 2, T * 2).reshape(T, 2),
            "rewards": np.zeros(T), "dones": np.zeros(T)}
    write_robomimic_hdf5(str(p), [demo])
    assert main(["info", str(p)]) == 0
    assert "WARNING" in capsys.readouterr().out
    assert main(["info", str(p), "--strict"]) == 1


def test_info_errors(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.hdf5")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    assert main(["info", str(tmp_path / "junk.hdf5")]) == 2
    assert "cannot open" in capsys.readouterr().err


def test_split_is_reproducible_and_touches_nothing_else(data, tmp_path):
    before = contents(data)
    copy = tmp_path / "copy.hdf5"
    shutil.copy(data, copy)
    r = subprocess.run([sys.executable, "-m", "modmimic.dataset", "split", str(data), "--valid-fraction", "0.25",
                        "--seed", "5", "--overwrite"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "mask/valid: 3 demos" in r.stdout
    assert contents(data) == before
    m1 = masks(data)
    assert len(m1["valid"]) == 3 and len(m1["train"]) == 9 and not set(m1["train"]) & set(m1["valid"])
    assert sorted(m1["train"] + m1["valid"], key=lambda n: int(n[5:])) == [f"demo_{i}" for i in range(12)]
    assert main(["split", str(copy), "--valid-fraction", "0.25", "--seed", "5", "--overwrite"]) == 0
    assert masks(copy) == m1  # same seed, same split
    assert main(["split", str(data), "--valid-fraction", "0.25", "--seed", "6", "--overwrite"]) == 0
    assert masks(data)["valid"] != m1["valid"]  # replaced, with another seed's draw
    assert contents(data) == before


def test_split_of_a_filter_key(data):
    assert main(["split", str(data), "--filter-key", "train", "--valid-fraction", "0.34", "--seed", "0"]) == 0
    m = masks(data)
    assert set(m["train_train"]) | set(m["train_valid"]) == set(m["train"])
    assert len(m["train_valid"]) == 3


def test_split_rejects_bad_fractions(data, capsys):
    assert main(["split", str(data), "--valid-fraction", "1.5"]) == 2
    assert "--valid-fraction" in capsys.readouterr().err
    with pytest.raises(Exception):
        split_demos(["demo_0"], 0.5, 0)


def test_split_feeds_training(tmp_path, tiny):
    """A split written by the tool is what train/validation read."""
    from modmimic.config import compose
    from modmimic.trainer import build_data

    p = tmp_path / "fresh.hdf5"
    make_reach_dataset(str(p), n_demos=10, valid_fraction=0.0)
    assert main(["split", str(p), "--valid-fraction", "0.2", "--seed", "1", "--overwrite"]) == 0
    cfg = compose("bc", [f"train.data={p}", "experiment.validate=true", "train.hdf5_filter_key=train",
                         "train.hdf5_validation_filter_key=valid", *tiny("bc")])
    d = build_data(cfg)
    assert d.train_store.demos == masks(p)["train"] and d.valid_store.demos == masks(p)["valid"]


@pytest.mark.parametrize("bad, expected", [
    ({"obs": {"x": np.zeros((0, 3))}, "actions": np.zeros((0, 2))}, "data/demo_1 is empty (num_samples=0)"),
    ({"obs": {"x": np.zeros((4, 3))}, "actions": np.zeros((5, 2))}, "data/demo_1/obs/x has 4 rows but num_samples=5"),
    ({"obs": {"x": np.array([[b"a"] * 3] * 5)}, "actions": np.zeros((5, 2))}, "data/demo_1/obs/x has dtype |S1"),
    ({"obs": {"x": np.full((5, 3), np.inf)}, "actions": np.zeros((5, 2))}, "data/demo_1/obs/x has NaN or Inf"),
    ({"obs": {"x": np.zeros((5, 4))}, "actions": np.zeros((5, 2))}, "data/demo_1/obs/x has shape (4,) per step"),
    ({"obs": {"y": np.zeros((5, 3))}, "actions": np.zeros((5, 2))}, "data/demo_1/obs/x is missing"),
])
def test_info_flags_what_training_refuses(bad, expected, tmp_path, capsys):
    """info lists the problem and exits 2 when training would refuse the file; it reads, never writes."""
    p = tmp_path / "bad.hdf5"
    good = {"obs": {"x": np.zeros((5, 3))}, "actions": np.zeros((5, 2))}
    write_robomimic_hdf5(str(p), [good, bad])
    before = p.read_bytes()
    assert main(["info", str(p)]) == 2
    cap = capsys.readouterr()
    assert f"ERROR: {p}: {expected}" in cap.out and "training would refuse this file" in cap.err
    assert len(cap.err.strip().splitlines()) == 1 and p.read_bytes() == before


def test_info_warns_about_what_training_skips(tmp_path, capsys):
    p = tmp_path / "t.hdf5"
    demo = {"obs": {"x": np.zeros((5, 3))}, "actions": np.zeros((5, 2)), "states": np.zeros((5, 2))}
    write_robomimic_hdf5(str(p), [demo, dict(demo, states=np.zeros((4, 2)))])
    with h5py.File(p, "r+") as f:
        f["data"].move("demo_0", "traj_0")
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "not named demo_<N> (traj_0)" in out and "data/demo_1/states has 4 rows but num_samples=5" in out
