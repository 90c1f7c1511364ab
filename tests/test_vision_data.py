"""Image observations in the episode store and the window sampler: uint8 HWC kept untouched, exact windows (padding,
frame stack, goals) on a hand-made HDF5, the memory-mapped store (row files) equal to the RAM store, no statistics for
image keys."""
import json
import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from modmimic import keys as K
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.rowfile import RowFile
from modmimic.data.sampler import WindowSampler

LENGTHS = [3, 5, 2]
H, W = 4, 6


def image(d, t, h=H, w=W, c=3):
    """uint8 [h, w, c] image of demo d at step t: every pixel different, every (d, t) different."""
    hh, ww, cc = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    return ((d * 61 + t * 17 + hh * 7 + ww * 3 + cc) % 256).astype(np.uint8)


def depth(d, t):
    return (np.arange(H * W, dtype=np.float32).reshape(H, W, 1) + 10 * d + t) / 7.0


@pytest.fixture
def img_hdf5(tmp_path):
    path = str(tmp_path / "img.hdf5")
    with h5py.File(path, "w") as f:
        for d, L in enumerate(LENGTHS):
            g = f.create_group(f"data/demo_{d}")
            g.attrs["num_samples"] = L
            t = np.arange(L)
            for grp, shift in (("obs", 0), ("next_obs", 1)):
                g[f"{grp}/x"] = (100.0 * d + t + shift)[:, None]
                g[f"{grp}/cam_image"] = np.stack([image(d, s + shift) for s in t])
                g[f"{grp}/cam_depth"] = np.stack([depth(d, s + shift) for s in t])
            g["actions"] = np.stack([t / 10.0 + d], 1)
        f["data"].attrs["env_args"] = '{"env_name": "Tiny", "type": 2, "env_kwargs": {}}'
    return path


KEYS = ["x", "cam_image", "cam_depth"]


def expected(L, fs, seq, pad_fs, pad_seq):
    n = L - (0 if pad_fs else fs - 1) - (0 if pad_seq else seq - 1)
    n = max(n, 1) if pad_seq else max(n, 0)
    for j in range(n):
        t = j + (0 if pad_fs else fs - 1)
        raw = range(t - (fs - 1), t + seq)
        yield [min(max(r, 0), L - 1) for r in raw], [0 <= r < L for r in raw]


@pytest.mark.parametrize("memmap", [False, True])
@pytest.mark.parametrize("fs,seq,pad_fs,pad_seq", [(1, 1, True, True), (3, 1, True, True), (2, 3, True, True),
                                                   (2, 3, False, False), (1, 4, True, False)])
def test_image_windows_exact(img_hdf5, tmp_path, memmap, fs, seq, pad_fs, pad_seq):
    store = load_episode_store(img_hdf5, KEYS, memmap_dir=str(tmp_path / "mm") if memmap else None)
    s = WindowSampler(store, 4, seq_length=seq, frame_stack=fs, pad_seq_length=pad_seq, pad_frame_stack=pad_fs)
    b = s.gather(torch.arange(len(s)))
    exp = [(d, w) for d in range(3) for w in expected(LENGTHS[d], fs, seq, pad_fs, pad_seq)]
    assert len(exp) == len(s)
    img, nimg = b[K.obs("cam_image")], b[K.next_obs("cam_image")]
    assert img.dtype == torch.uint8 and img.shape == (len(exp), fs - 1 + seq, H, W, 3)
    for i, (d, (steps, mask)) in enumerate(exp):
        assert np.array_equal(img[i].numpy(), np.stack([image(d, r) for r in steps]))
        assert np.array_equal(nimg[i].numpy(), np.stack([image(d, r + 1) for r in steps]))
        assert np.array_equal(b[K.obs("cam_depth")][i].numpy(), np.stack([depth(d, r) for r in steps]))
        assert b[K.obs("x")][i, :, 0].tolist() == [100.0 * d + r for r in steps]
        assert b[K.MASK][i].tolist() == mask


def test_image_goal_last(img_hdf5, tmp_path):
    for mm in (None, str(tmp_path / "mm")):
        store = load_episode_store(img_hdf5, KEYS, memmap_dir=mm)
        s = WindowSampler(store, 4, seq_length=2, goal_mode="last")
        b = s.gather(torch.arange(len(s)))
        for i in range(len(s)):
            d = int(b[K.EPISODE][i, 0])
            assert b[K.goal("cam_image")].dtype == torch.uint8
            assert np.array_equal(b[K.goal("cam_image")][i].numpy(), np.stack([image(d, LENGTHS[d])] * 2))


def test_memmap_image_store_equals_ram(img_hdf5, tmp_path):
    ram = load_episode_store(img_hdf5, KEYS)
    mm = load_episode_store(img_hdf5, KEYS, memmap_dir=str(tmp_path / "mm"))
    assert set(ram.uint8) == set(mm.uint8) == {K.obs("cam_image"), K.next_obs("cam_image")}
    n = sum(LENGTHS)
    for key, t in ram.uint8.items():
        rf = mm.uint8[key]
        assert isinstance(rf, RowFile) and rf.dtype == torch.uint8 and rf.shape == (n, H, W, 3)
        assert t.dtype == torch.uint8 and t.nbytes == n * H * W * 3 == rf.nbytes  # 1 byte per pixel
        every = rf[torch.arange(n)]
        assert every.dtype == torch.uint8 and torch.equal(every, t)
        rows = torch.tensor([[4, 4, 5], [0, 9, 1], [9, 9, 9]])  # repeats, gaps, out of order
        assert torch.equal(rf[rows], t[rows])
    assert torch.equal(ram.flat, torch.as_tensor(mm.flat))
    # reused store (second load) and a copy in another process (pickled: reopens the file) read the same rows
    again = load_episode_store(img_hdf5, KEYS, memmap_dir=str(tmp_path / "mm"))
    assert again.memmap_reused
    rf = pickle.loads(pickle.dumps(again.uint8[K.obs("cam_image")]))
    assert torch.equal(rf[torch.arange(n)], ram.uint8[K.obs("cam_image")])
    with pytest.raises(IndexError):
        rf[torch.tensor([n])]
    a = WindowSampler(ram, 5, seq_length=3, frame_stack=2, seed=4)
    b = WindowSampler(mm, 5, seq_length=3, frame_stack=2, seed=4)
    for _ in range(3):
        assert (a.sample() == b.sample()).all()


def test_image_keys_get_no_normalization_stats(img_hdf5):
    store = load_episode_store(img_hdf5, KEYS)
    stats = store.obs_normalization_stats()
    assert set(stats) == {"x"}  # neither the uint8 image nor the float [H, W, 1] depth
    s = WindowSampler(store, 4, obs_normalization_stats=stats)
    b = s.gather(torch.arange(len(s)))
    assert np.array_equal(b[K.obs("cam_image")][3, 0].numpy(), image(1, 0))  # images untouched
    assert np.array_equal(b[K.obs("cam_depth")][3, 0].numpy(), depth(1, 0))
    x = np.concatenate([100.0 * d + np.arange(L) for d, L in enumerate(LENGTHS)])
    assert b[K.obs("x")][3, 0, 0].item() == pytest.approx((100.0 - x.mean()) / (x.std() + 1e-3), rel=1e-6)


def test_synthetic_image_dataset_streams_uint8(tmp_path):
    from modmimic.data.synthetic import write_image_dataset

    path = str(tmp_path / "syn.hdf5")
    info = write_image_dataset(path, n_demos=3, demo_len=5, size=8, seed=1)
    assert info["frames"] == 15 and info["image_bytes"] == 15 * 2 * 8 * 8 * 3
    store = load_episode_store(path, ["object", "agentview_image", "robot0_eye_in_hand_image"], load_next_obs=False)
    img = store.uint8[K.obs("agentview_image")]
    assert img.shape == (15, 8, 8, 3) and img.dtype == torch.uint8 and img.nbytes == 15 * 8 * 8 * 3
    with h5py.File(path) as f:
        assert f["data/demo_2/obs/agentview_image"].chunks == (1, 8, 8, 3)
        assert np.array_equal(img[10:].numpy(), f["data/demo_2/obs/agentview_image"][()])


def test_states_to_obs_refuses_bad_input(img_hdf5, tmp_path, capsys):
    from modmimic.dataset import main

    out = str(tmp_path / "out.hdf5")
    assert main(["states_to_obs", img_hdf5, out, "--camera-names", "agentview"]) == 2
    assert "has no 'states'" in capsys.readouterr().err and not os.path.exists(out)
    assert main(["states_to_obs", img_hdf5, img_hdf5, "--camera-names", "agentview"]) == 2
    assert "is the input file" in capsys.readouterr().err
    with h5py.File(img_hdf5, "r+") as f:
        del f["data"].attrs["env_args"]
    assert main(["states_to_obs", img_hdf5, out, "--camera-names", "agentview"]) == 2
    assert "env_args" in capsys.readouterr().err and not os.path.exists(out)


@pytest.mark.slow
def test_image_benchmark_smoke():
    root = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    r = subprocess.run([sys.executable, "bench_image_data.py", "--smoke"], cwd=root, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert {x["workload"] for x in recs} >= {"image_sampler/ram/[16,10]", "image_sampler/memmap/[16,10]",
                                            "image_sampler/memmap_large/[16,10]"}
