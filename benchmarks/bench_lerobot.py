"""LeRobotDataset source vs robomimic HDF5: sampler time per [100, 10] window batch (the same data, both loaded into
the RAM episode store, measured interleaved in one run), video decode throughput into the store (frames/s at 84x84
and 224x224, AV1 as LeRobot writes it, 2 decode processes) and peak resident memory while decoding.

    python benchmarks/bench_lerobot.py            # full sizes
    python benchmarks/bench_lerobot.py --smoke    # tiny sizes

Prints one JSON record per measurement. Each decode measurement runs in a fresh process (``--decode DIR``) that only
loads the store: ``peak_rss_mb`` is that process's ``VmHWM``, ``workers_peak_rss_mb`` the largest ``ru_maxrss`` of
its decode processes (forked, so it counts pages shared with the parent), ``store_mb`` the decoded uint8 frames.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np


def smooth_frames(e: int, T: int, size: int) -> np.ndarray:
    """A moving smooth pattern, uint8 [T, size, size, 3] (camera-like content; noise would be unrealistic for a
    video codec)."""
    y, x = np.meshgrid(np.linspace(0, 6, size), np.linspace(0, 6, size), indexing="ij")
    t = np.arange(T)[:, None, None] / 8.0
    r = 128 + 100 * np.sin(y[None] + t + e)
    g = 128 + 100 * np.cos(x[None] - 0.7 * t + 0.3 * e)
    b = 128 + 60 * np.sin(x[None] + y[None] + 0.5 * t)
    return np.stack([r, g, b], -1).astype(np.uint8)


def write_hdf5(path: str, n_demos: int, T: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for e in range(n_demos):
            g = data.create_group(f"demo_{e}")
            g.attrs["num_samples"] = T
            g.create_dataset("obs/agentview_image", data=smooth_frames(e, T, size), chunks=(1, size, size, 3))
            g.create_dataset("obs/robot0_eef_pos", data=rng.standard_normal((T, 3)).astype(np.float32))
            g.create_dataset("obs/object", data=rng.standard_normal((T, 10)).astype(np.float32))
            g.create_dataset("actions", data=rng.uniform(-1, 1, (T, 7)).astype(np.float32))
        data.attrs["env_args"] = json.dumps({"env_name": "Synthetic", "type": 2, "env_kwargs": {}})


def proc_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def decode_child(root: str) -> None:
    """Load the LeRobot folder's images into the RAM store and report time and memory (run in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    from modmimic.data.lerobot import load_lerobot_store

    t = time.perf_counter()
    store = load_lerobot_store(root, ["agentview_image"], load_next_obs=False)
    wall = time.perf_counter() - t
    img = store.uint8[("observation", "agentview_image")]
    print(json.dumps({"frames": int(img.shape[0]), "wall_s": wall, "frames_per_s": img.shape[0] / wall,
                      "peak_rss_mb": proc_hwm_mb(), "store_mb": img.numel() / 1e6,
                      "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def sampler_ratio(h5: str, lr: str, rounds: int, batches: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from modmimic.data.hdf5 import load_episode_store
    from modmimic.data.sampler import WindowSampler

    keys = ["robot0_eef_pos", "object", "agentview_image"]
    stores = {"hdf5": load_episode_store(h5, keys, load_next_obs=False),
              "lerobot": load_episode_store(lr, keys, load_next_obs=False)}
    samplers = {k: WindowSampler(s, 100, seq_length=10, seed=0) for k, s in stores.items()}
    for s in samplers.values():
        s.sample()
    times = {k: [] for k in samplers}
    for _ in range(rounds):
        for k, s in samplers.items():  # interleaved: both see the same machine state
            t = time.perf_counter()
            for _ in range(batches):
                s.sample()
            times[k].append((time.perf_counter() - t) / batches)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"bench": "sampler [100, 10] batch", "hdf5_ms": med["hdf5"] * 1e3, "lerobot_ms": med["lerobot"] * 1e3,
            "ratio_lerobot_over_hdf5": med["lerobot"] / med["hdf5"], "rounds": rounds, "batches_per_round": batches}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--decode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.decode:
        decode_child(args.decode)
        return 0
    from modmimic.data.convert import robomimic_to_lerobot

    tmp = tempfile.mkdtemp(prefix="bench_lerobot_")
    try:
        sizes = [(84, 4, 20), (224, 2, 10)] if args.smoke else [(84, 100, 100), (224, 20, 100)]
        for size, n, T in sizes:
            h5, lr = os.path.join(tmp, f"d{size}.hdf5"), os.path.join(tmp, f"d{size}")
            write_hdf5(h5, n, T, size)
            t = time.perf_counter()
            robomimic_to_lerobot(h5, lr)
            enc = time.perf_counter() - t
            out = subprocess.run([sys.executable, __file__, "--decode", lr], capture_output=True, text=True,
                                 check=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({"bench": f"video decode {size}x{size}", **rec, "encode_s": enc,
                              "video_mb": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(lr)
                                              for f in fs if f.endswith(".mp4")) / 1e6}), flush=True)
            if size == 84:
                print(json.dumps(sampler_ratio(h5, lr, rounds=3 if args.smoke else 15,
                                               batches=2 if args.smoke else 20)), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
