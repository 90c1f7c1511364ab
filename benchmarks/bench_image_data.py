"""Image data path: sampler time per [16, 10] window batch (two 84x84x3 uint8 cameras + low-dim) from the RAM store and
from the memory-mapped store, and the peak resident memory of a process sampling from a large image store.

    python bench_image_data.py                      # speed (RAM vs memmap) on a 60-demo dataset
    python bench_image_data.py --rss-gb 4           # + peak RSS while sampling from a >= 4 GB image store
    python bench_image_data.py --smoke              # tiny sizes (tests)

Prints one JSON record per measurement. The synthetic dataset is streamed to HDF5 demo by demo
(:func:`modmimic.data.synthetic.write_image_dataset`), never built in RAM. RSS is ``ru_maxrss`` of a fresh process
that only opens the (already built) store and samples, measured separately from the process that builds the store.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler
from modmimic.data.synthetic import write_image_dataset

CAMS = ("agentview", "robot0_eye_in_hand")
LOW = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
KEYS = LOW + [f"{c}_image" for c in CAMS]


def proc_status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB (Linux). ``VmHWM`` is this process's peak RSS (``ru_maxrss`` is
    not: Linux carries it over ``execve`` from the parent that forked the process)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return proc_status_mb("VmHWM")


def sampler_ms(store, batches: int, rounds: int, batch: int = 16, seq: int = 10) -> float:
    s = WindowSampler(store, batch, seq_length=seq, seed=0)
    for _ in range(5):
        s.sample()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(batches):
            b = s.sample()
        times.append((time.perf_counter() - t) / batches)
    assert b[("observation", f"{CAMS[0]}_image")].dtype == torch.uint8
    return statistics.median(times) * 1e3


def speed(tmp: str, n_demos: int, demo_len: int, size: int, batches: int, rounds: int) -> None:
    path = os.path.join(tmp, "speed.hdf5")
    info = write_image_dataset(path, n_demos, demo_len, CAMS, size)
    ram = load_episode_store(path, KEYS, load_next_obs=False)
    mm = load_episode_store(path, KEYS, load_next_obs=False, memmap_dir=os.path.join(tmp, "mm"))
    for name, store in (("ram", ram), ("memmap", mm)):
        ms = sampler_ms(store, batches, rounds)
        print(json.dumps({"workload": f"image_sampler/{name}/[16,10]", "ms_per_batch": round(ms, 3),
                          "cameras": f"{len(CAMS)}x{size}x{size}x3", "frames": info["frames"],
                          "batch_image_MB": round(16 * 10 * len(CAMS) * size * size * 3 / 1e6, 2),
                          "threads": torch.get_num_threads()}), flush=True)


def rss_child(path: str, mm: str, batches: int) -> None:
    """In a fresh process: open the built store, sample ``batches`` [16, 10] batches, report peak RSS."""
    before = peak_rss_mb()
    store = load_episode_store(path, KEYS, load_next_obs=False, memmap_dir=mm)
    assert store.memmap_reused
    s = WindowSampler(store, 16, seq_length=10, seed=1)
    t = time.perf_counter()
    for _ in range(batches):
        s.sample()
    dt = (time.perf_counter() - t) / batches
    image_bytes = sum(u.nbytes for u in store.uint8.values())
    print(json.dumps({"workload": "image_sampler/memmap_large/[16,10]", "image_store_GB": round(image_bytes / 1e9, 3),
                      "batches": batches, "ms_per_batch": round(dt * 1e3, 3),
                      "peak_rss_MB": round(peak_rss_mb(), 1), "rss_after_imports_MB": round(before, 1),
                      "RssAnon_MB": round(proc_status_mb("RssAnon"), 1),
                      "RssFile_MB": round(proc_status_mb("RssFile"), 1)}), flush=True)


def rss(tmp: str, gb: float, demo_len: int, size: int, batches: int) -> None:
    path = os.path.join(tmp, "large.hdf5")
    frame = len(CAMS) * size * size * 3
    n_demos = max(1, int(-(-gb * 1e9 // (frame * demo_len))))
    t = time.perf_counter()
    info = write_image_dataset(path, n_demos, demo_len, CAMS, size,
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
    gen_s = time.perf_counter() - t
    mm = os.path.join(tmp, "mm_large")
    build = subprocess.run([sys.executable, __file__, "--build-child", path, mm], capture_output=True, text=True)
    if build.returncode:
        raise RuntimeError(build.stderr)
    b = json.loads(build.stdout.strip().splitlines()[-1])
    print(json.dumps({"workload": "image_dataset/generate+build", "hdf5_GB": round(info["file_bytes"] / 1e9, 3),
                      "generate_s": round(gen_s, 1), **b}), flush=True)
    out = subprocess.run([sys.executable, __file__, "--rss-child", path, mm, str(batches)], capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    print(out.stdout.strip().splitlines()[-1], flush=True)


def build_child(path: str, mm: str) -> None:
    t = time.perf_counter()
    store = load_episode_store(path, KEYS, load_next_obs=False, memmap_dir=mm)
    print(json.dumps({"build_s": round(time.perf_counter() - t, 1), "build_peak_rss_MB": round(peak_rss_mb(), 1),
                      "reused": store.memmap_reused}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--rss-gb", type=float, default=0.0, help="also measure peak RSS on an image store this large")
    ap.add_argument("--rss-only", action="store_true", help="skip the speed comparison")
    ap.add_argument("--tmp", default=None, help="folder for the datasets (default: a temporary folder)")
    ap.add_argument("--build-child", nargs=2)
    ap.add_argument("--rss-child", nargs=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.build_child:
        return build_child(*a.build_child)
    if a.rss_child:
        return rss_child(a.rss_child[0], a.rss_child[1], int(a.rss_child[2]))
    tmp = tempfile.mkdtemp(prefix="bench_image_", dir=a.tmp)
    try:
        if a.smoke:
            speed(tmp, 3, 12, 8, batches=2, rounds=1)
            rss(tmp, 0.0005, 12, 8, batches=3)
            return
        if not a.rss_only:
            speed(tmp, 60, 100, 84, batches=50, rounds=7)
        if a.rss_gb:
            rss(tmp, a.rss_gb, 100, 84, batches=2000)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
