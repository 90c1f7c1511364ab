"""Window contents on a hand-made robomimic HDF5, element by element; the memory-mapped store; structural
checks."""
import multiprocessing
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from modmimic import keys as K
from modmimic.data.hdf5 import DatasetError, load_episode_store
from modmimic.data.sampler import WindowDataset, WindowSampler, window_starts
from modmimic.data.synthetic import write_robomimic_hdf5
from modmimic.data import stats as S

LENGTHS = [3, 5, 2]  # demo_0, demo_1, demo_2 (written as demo_0, demo_1, demo_10 to check integer ordering)
NAMES = ["demo_0", "demo_1", "demo_10"]


def value(d, t):
    """obs 'x' of demo d at step t."""
    return 100.0 * d + t


@pytest.fixture
def tiny(tmp_path):
    path = str(tmp_path / "tiny.hdf5")
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        # written out of order on purpose: robomimic sorts by the integer in the name
        for d in [2, 0, 1]:
            L = LENGTHS[d]
            g = data.create_group(NAMES[d])
            g.attrs["num_samples"] = L
            t = np.arange(L, dtype=np.float64)
            g["obs/x"] = np.stack([value(d, t), -value(d, t)], 1)
            g["obs/y"] = value(d, t)[:, None] + 0.5
            g["next_obs/x"] = np.stack([value(d, t + 1), -value(d, t + 1)], 1)
            g["next_obs/y"] = value(d, t + 1)[:, None] + 0.5
            g["actions"] = np.stack([t / 10, -t / 10], 1) + d
            g["rewards"] = (t == L - 1).astype(np.float64)
            g["dones"] = (t == L - 1).astype(np.int64)
        data.attrs["env_args"] = '{"env_name": "Tiny", "type": 2, "env_kwargs": {}}'
        f["mask/train"] = np.array([b"demo_0", b"demo_10"])
        f["mask/valid"] = np.array([b"demo_1"])
    return path


def windows(path, fs=1, seq=1, pad_fs=True, pad_seq=True, goal=None, filter_key=None, next_obs=True):
    store = load_episode_store(path, ["x", "y"], filter_key=filter_key, load_next_obs=next_obs)
    s = WindowSampler(store, batch_size=4, seq_length=seq, frame_stack=fs, pad_seq_length=pad_seq,
                      pad_frame_stack=pad_fs, goal_mode=goal)
    return store, s, s.gather(torch.arange(len(s)))


def expected_rows(L, fs, seq, pad_fs, pad_seq):
    """robomimic's windows for one demo: list of (index_in_demo, steps, mask)."""
    n = L - (0 if pad_fs else fs - 1) - (0 if pad_seq else seq - 1)
    if pad_seq:
        n = max(n, 1)
    out = []
    for j in range(max(n, 0)):
        t = j + (0 if pad_fs else fs - 1)
        raw = list(range(t - (fs - 1), t + seq))
        out.append((t, [min(max(r, 0), L - 1) for r in raw], [0 <= r < L for r in raw]))
    return out


@pytest.mark.parametrize("fs,seq,pad_fs,pad_seq", [
    (1, 1, True, True), (1, 3, True, True), (3, 1, True, True), (2, 3, True, True),
    (2, 3, False, True), (2, 3, True, False), (2, 2, False, False), (1, 4, True, False)])
def test_windows_match_robomimic(tiny, fs, seq, pad_fs, pad_seq):
    store, s, b = windows(tiny, fs, seq, pad_fs, pad_seq)
    assert store.demos == NAMES
    exp = [(d, w) for d in range(3) for w in expected_rows(LENGTHS[d], fs, seq, pad_fs, pad_seq)]
    assert len(s) == len(exp)
    assert b.batch_size == torch.Size([len(exp), fs - 1 + seq])
    for i, (d, (t, steps, mask)) in enumerate(exp):
        x = b[K.obs("x")][i]
        assert x[:, 0].tolist() == [value(d, r) for r in steps]
        assert x[:, 1].tolist() == [-value(d, r) for r in steps]
        assert b[K.obs("y")][i, :, 0].tolist() == [value(d, r) + 0.5 for r in steps]
        assert b[K.next_obs("x")][i, :, 0].tolist() == [value(d, r + 1) for r in steps]
        assert torch.allclose(b[K.ACTION][i], torch.tensor([[r / 10 + d, -r / 10 + d] for r in steps]))
        assert b[K.REWARD][i, :, 0].tolist() == [float(r == LENGTHS[d] - 1) for r in steps]
        assert b[K.DONE][i, :, 0].tolist() == [r == LENGTHS[d] - 1 for r in steps]
        assert b[K.MASK][i].tolist() == mask
        assert b[K.IS_INIT][i].tolist() == [r == 0 for r in steps]
        assert int(b[K.EPISODE][i, 0]) == d


def test_single_step_windows_equal_first_step_of_longer_ones(tiny):
    """Single-step windows take a shortcut (no window arithmetic): every entry equals step 0 of the same windows
    drawn two steps long (the same start rows), goals included."""
    for goal in (None, "last"):
        _, s1, b1 = windows(tiny, 1, 1, goal=goal)
        _, s2, b2 = windows(tiny, 1, 2, goal=goal)
        assert torch.equal(s1.starts, s2.starts)
        first = b2[:, :1]
        assert set(b1.keys(True, True)) == set(first.keys(True, True))
        for k in b1.keys(True, True):
            assert torch.equal(b1[k], first[k]), k


def test_goal_last(tiny):
    for pad_seq in (True, False):
        store, s, b = windows(tiny, 1, 2, True, pad_seq, goal="last")
        for i in range(len(s)):
            d = int(b[K.EPISODE][i, 0])
            end = LENGTHS[d] - (0 if pad_seq else 1)
            # goal = next_obs at end_index_in_demo - 1, the same for every window of the demo and every step
            assert b[K.goal("x")][i, :, 0].tolist() == [value(d, end)] * 2


def test_filter_keys_and_no_next_obs(tiny):
    store, s, b = windows(tiny, filter_key="train", next_obs=False)
    assert store.demos == ["demo_0", "demo_10"]
    assert len(s) == 3 + 2
    assert (K.NEXT, K.OBS) not in b.keys(include_nested=True)
    store, s, b = windows(tiny, filter_key="valid")
    assert store.demos == ["demo_1"] and b[K.obs("x")][:, 0, 0].tolist() == [100.0 + t for t in range(5)]


def test_sampler_uniform_over_starts_and_permutation(tiny):
    store = load_episode_store(tiny, ["x"])
    s = WindowSampler(store, batch_size=5, seq_length=1, seed=3)
    seen = torch.cat([s.sample()[K.INDEX][:, 0] for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10))  # one full pass of 10 windows = 2 batches, no repeats
    s2 = WindowSampler(store, batch_size=7, seq_length=1, shuffle=False, seed=0)
    counts = torch.bincount(torch.cat([s2.sample()[K.EPISODE][:, 0] for _ in range(3000)]), minlength=3).float()
    # demos are drawn in proportion to their length, as robomimic's index list does
    assert torch.allclose(counts / counts.sum(), torch.tensor(LENGTHS) / 10.0, atol=0.02)


def test_sampler_state_roundtrip(tiny):
    store = load_episode_store(tiny, ["x"])
    a = WindowSampler(store, batch_size=3, seed=1)
    a.sample()
    state = a.state_dict()
    nxt = [a.sample()[K.INDEX] for _ in range(5)]
    b = WindowSampler(store, batch_size=3, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(x, b.sample()[K.INDEX]) for x in nxt)


def test_map_style_dataset(tiny):
    store = load_episode_store(tiny, ["x"])
    s = WindowSampler(store, batch_size=2, seq_length=2)
    ds = WindowDataset(s)
    assert len(ds) == 10
    item = ds[4]
    assert item.batch_size == torch.Size([2]) and item[K.obs("x")][:, 0].tolist() == [101.0, 102.0]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, collate_fn=WindowDataset.collate)
    first = next(iter(loader))
    assert first.batch_size == torch.Size([4, 2])
    assert first[K.obs("x")][:, 0, 0].tolist() == [0.0, 1.0, 2.0, 100.0]


def test_normalization_formulas(tiny):
    store = load_episode_store(tiny, ["x", "y"], filter_key="train")
    allx = np.concatenate([np.stack([value(d, np.arange(L)), -value(d, np.arange(L))], 1)
                           for d, L in [(0, 3), (2, 2)]])
    st = store.obs_normalization_stats()
    assert np.allclose(st["x"]["offset"], allx.mean(0, keepdims=True))
    assert np.allclose(st["x"]["scale"], allx.std(0, keepdims=True) + 1e-3)
    assert st["x"]["offset"].shape == (1, 2)
    s = WindowSampler(store, batch_size=2, obs_normalization_stats=st)
    b = s.gather(torch.arange(len(s)))
    assert torch.allclose(b[K.obs("x")][:, 0], torch.tensor((allx - allx.mean(0)) / (allx.std(0) + 1e-3)).float(),
                          atol=1e-5)
    # next obs use the observation stats too
    assert torch.allclose(b[K.next_obs("x")][0, 0, 0], torch.tensor((1.0 - allx.mean(0)[0]) / (allx.std(0)[0] + 1e-3)).float())
    acts = np.concatenate([np.stack([np.arange(L) / 10, -np.arange(L) / 10], 1) + d for d, L in [(0, 3), (2, 2)]])
    mm = store.action_normalization_stats({"actions": {"normalization": "min_max"}})["actions"]
    normed = (acts - mm["offset"]) / mm["scale"]
    assert np.allclose(normed.min(0), -0.999999, atol=1e-6) and np.allclose(normed.max(0), 0.999999, atol=1e-6)
    g = store.action_normalization_stats({"actions": {"normalization": "gaussian"}})["actions"]
    assert np.allclose(g["offset"], acts.mean(0)) and np.allclose(g["scale"], acts.std(0))
    const = S.action_stats_from_moments(S.moments(np.ones((4, 2))), "min_max")
    assert np.allclose((np.ones((1, 2)) - const["offset"]) / const["scale"], 0)


def test_chan_merge_equals_whole():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3)) for n in (5, 1, 17)]
    m = None
    for p in parts:
        m = S.merge_moments(m, S.moments(p))
    whole = np.concatenate(parts)
    assert np.allclose(m["mean"], whole.mean(0)) and np.allclose(m["sqdiff"] / m["n"], whole.var(0))


def test_bad_input_errors(tiny, tmp_path):
    with pytest.raises(DatasetError, match="'z' not found"):
        load_episode_store(tiny, ["z"])
    with pytest.raises(DatasetError, match="filter key 'nope'"):
        load_episode_store(tiny, ["x"], filter_key="nope")
    with pytest.raises(DatasetError, match="not found"):
        load_episode_store(str(tmp_path / "missing.hdf5"), ["x"])
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DatasetError, match="corrupt or not an HDF5"):
        load_episode_store(str(junk), ["x"])
    bad = str(tmp_path / "nan.hdf5")
    x = np.zeros((4, 2))
    x[2, 1] = np.nan
    write_robomimic_hdf5(bad, [{"obs": {"x": x}, "actions": np.zeros((4, 2)), "rewards": np.zeros(4),
                                "dones": np.zeros(4)}])
    with pytest.raises(DatasetError, match=r"NaN or Inf.*'observation', 'x'.*row 2"):
        load_episode_store(bad, ["x"], load_next_obs=False)
    with pytest.raises(DatasetError, match="no 'rewards'"):
        write_robomimic_hdf5(bad, [{"obs": {"x": np.zeros((4, 2))}, "actions": np.zeros((4, 2))}])
        load_episode_store(bad, ["x"], load_next_obs=False, load_rewards=True)


def test_memmap_store_matches_ram(tiny, tmp_path):
    ram = load_episode_store(tiny, ["x", "y"])
    mm = load_episode_store(tiny, ["x", "y"], memmap_dir=str(tmp_path / "mm"))
    assert torch.equal(ram.flat, torch.as_tensor(mm.flat))
    w = torch.arange(10)
    a = WindowSampler(ram, 2, seq_length=3).gather(w)
    b = WindowSampler(mm, 2, seq_length=3).gather(w)
    assert (a == b).all()


def test_window_starts_index_math():
    starts, ep = window_starts(torch.tensor([3, 1]), torch.tensor([0, 3]), seq_length=2, frame_stack=2,
                               pad_seq_length=False, pad_frame_stack=False)
    # demo 0 (L=3): n = 3 - 1 - 1 = 1 window at t=1; demo 1 (L=1): none
    assert starts.tolist() == [1] and ep.tolist() == [0]


def store_dirs(root):
    return sorted(n for n in os.listdir(root) if not n.startswith(".store-"))


def test_memmap_store_is_keyed_and_reused(tiny, tmp_path):
    """The store is keyed by file contents + filter key + layout: the same load reuses it (same values, no
    rebuild), another filter key or other contents get their own, a killed build is discarded."""
    mm = str(tmp_path / "mm")
    a = load_episode_store(tiny, ["x", "y"], memmap_dir=mm)
    assert not a.memmap_reused and store_dirs(mm) == [os.path.basename(a.memmap_path)]
    stamp = os.stat(os.path.join(a.memmap_path, "flat.memmap")).st_mtime_ns
    b = load_episode_store(tiny, ["x", "y"], memmap_dir=mm)
    assert b.memmap_reused and b.memmap_path == a.memmap_path
    assert os.stat(os.path.join(a.memmap_path, "flat.memmap")).st_mtime_ns == stamp
    assert torch.equal(torch.as_tensor(a.flat), torch.as_tensor(b.flat))
    for k in a.obs_moments:  # the statistics come back from the store exactly
        for f in ("n", "mean", "sqdiff", "min", "max"):
            assert np.array_equal(a.obs_moments[k][f], b.obs_moments[k][f])
    assert a.action_normalization_stats({"actions": {"normalization": "min_max"}})["actions"]["scale"].tolist() == \
        b.action_normalization_stats({"actions": {"normalization": "min_max"}})["actions"]["scale"].tolist()
    c = load_episode_store(tiny, ["x", "y"], filter_key="train", memmap_dir=mm)
    assert not c.memmap_reused and c.memmap_path != a.memmap_path
    with h5py.File(tiny, "r+") as f:  # other contents, same name and layout
        f["data/demo_0/obs/x"][0] = [7.0, 7.0]
    d = load_episode_store(tiny, ["x", "y"], memmap_dir=mm)
    assert not d.memmap_reused and d.memmap_path not in (a.memmap_path, c.memmap_path)
    assert float(torch.as_tensor(d.flat)[0, 0]) == 7.0
    # a build that a killed process left behind is discarded, never taken for a store
    shutil.rmtree(d.memmap_path)
    os.makedirs(os.path.join(mm, ".build-" + os.path.basename(d.memmap_path)[6:] + "-999999"))
    e = load_episode_store(tiny, ["x", "y"], memmap_dir=mm)
    assert not e.memmap_reused and e.memmap_path == d.memmap_path
    assert not [n for n in os.listdir(mm) if n.startswith(".build-")]


def _load_in_child(path, mm, q):
    s = load_episode_store(path, ["x", "y"], memmap_dir=mm)
    q.put((s.memmap_path, s.memmap_reused, torch.as_tensor(s.flat).sum().item()))


def test_memmap_store_concurrent_builds_share_one(tiny, tmp_path):
    """Two processes loading at once (a sweep's jobs): one builds under the lock, the other reuses it."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    mm = str(tmp_path / "mm")
    procs = [ctx.Process(target=_load_in_child, args=(tiny, mm, q)) for _ in range(2)]
    for p in procs:
        p.start()
    out = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert out[0][0] == out[1][0] and sorted(r for _, r, _ in out) == [False, True] and out[0][2] == out[1][2]
    assert len(store_dirs(mm)) == 1


def test_structural_errors_name_demo_and_key(tmp_path):
    """Refused before anything is allocated, naming the demo and dataset."""
    p = str(tmp_path / "bad.hdf5")
    good = {"obs": {"x": np.zeros((3, 2))}, "actions": np.zeros((3, 2))}
    write_robomimic_hdf5(p, [good, {"obs": {"x": np.zeros((0, 2))}, "actions": np.zeros((0, 2))}])
    with pytest.raises(DatasetError, match=r"data/demo_1 is empty \(num_samples=0\)"):
        load_episode_store(p, ["x"], load_next_obs=False)
    write_robomimic_hdf5(p, [good, {"obs": {"x": np.array([[b"a", b"b"]] * 3)}, "actions": np.zeros((3, 2))}])
    with pytest.raises(DatasetError, match=r"data/demo_1/obs/x has dtype \|S1"):
        load_episode_store(p, ["x"], load_next_obs=False)
    write_robomimic_hdf5(p, [good, {"obs": {"x": np.zeros((2, 2))}, "actions": np.zeros((3, 2))}])
    with pytest.raises(DatasetError, match=r"data/demo_1/obs/x has 2 rows but num_samples=3"):
        load_episode_store(p, ["x"], load_next_obs=False)
    with pytest.raises(DatasetError, match="is a directory"):
        load_episode_store(str(tmp_path), ["x"])


def test_non_demo_groups_warn(tmp_path):
    p = str(tmp_path / "t.hdf5")
    write_robomimic_hdf5(p, [{"obs": {"x": np.zeros((3, 2))}, "actions": np.zeros((3, 2))}] * 2)
    with h5py.File(p, "r+") as f:
        f["data"].move("demo_1", "traj_7")
    with pytest.warns(UserWarning, match=r"not named demo_<N> \(traj_7\)"):
        s = load_episode_store(p, ["x"], load_next_obs=False)
    assert s.demos == ["demo_0"]
