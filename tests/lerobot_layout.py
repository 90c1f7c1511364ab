"""Write small LeRobotDataset folders (v3.0 and v2.1) for the reader tests, independently of modmimic's converter.

LeRobot's own writer (``lerobot`` / ``lerobot-dataset``) cannot be a test dependency here: its dataset module imports
torchvision (which does not load beside the CPU torch) and Hugging Face ``datasets``/``huggingface_hub``. These
folders follow the layout that writer produces (``lerobot/datasets/utils.py``, ``video_utils.py``, v3.0 and the v2.1
layout its v2.1 -> v3.0 converter reads): ``info.json`` fields, file naming and chunking, the v3.0 episode table
columns (``data/chunk_index``, ``videos/<key>/from_timestamp``, ...), several episodes per data file and per video
file, Parquet list columns for vectors and scalars for ``[1]`` features, ``tasks.parquet`` indexed by the task string
(as pandas writes it), and video encoded with PyAV as LeRobot does (``libsvtav1``, ``yuv420p``, ``g=2``, ``crf=30``).
"""
from __future__ import annotations

import json
import os

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
H, W = 48, 64
STATE_NAMES = ["x", "y", "z"]


def frame(cam: int, e: int, t: int) -> np.ndarray:
    """A smooth uint8 [H, W, 3] image, different per camera, episode and step."""
    hh, ww = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    return np.stack([128 + 90 * np.sin(hh / 6 + t / 3 + e + cam), 128 + 90 * np.cos(ww / 8 - t / 4 + cam),
                     np.full((H, W), 40 + 30 * e + 50 * cam)], -1).astype(np.uint8)


def episodes_data(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for e, L in enumerate(lengths):
        out.append({"state": rng.standard_normal((L, 3)).astype(np.float32),
                    "env": rng.standard_normal((L, 2)).astype(np.float32),
                    "action": rng.uniform(-1, 1, (L, 2)).astype(np.float32),
                    "reward": rng.random(L).astype(np.float32), "done": np.arange(L) == L - 1,
                    "task": f"task {e % 2}",
                    "images": {cam: np.stack([frame(i, e, t) for t in range(L)])
                               for i, cam in enumerate(("front", "wrist"))}})
    return out


def encode(path: str, frames: np.ndarray, codec: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    opts = {"g": "2", "crf": "30"}
    if codec == "libsvtav1":
        opts.update({"preset": "12", "svtav1-params": "log=1"})
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=FPS, options=opts)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i, img in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            fr.pts = i
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def decode_all(path: str) -> np.ndarray:
    """Every frame of a video file in presentation order (the reference the reader is compared with)."""
    with av.open(path) as c:
        frames = sorted(((fr.pts, fr.to_ndarray(format="rgb24")) for fr in c.decode(video=0)), key=lambda x: x[0])
    return np.stack([f for _, f in frames])


def features(video_codec=("av1", "h264")):
    vid = lambda codec: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],  # noqa
                         "info": {"video.height": H, "video.width": W, "video.codec": codec,
                                  "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": FPS,
                                  "video.channels": 3, "has_audio": False}}
    return {"observation.state": {"dtype": "float32", "shape": [3], "names": STATE_NAMES},
            "observation.environment_state": {"dtype": "float32", "shape": [2], "names": None},
            "observation.images.front": vid(video_codec[0]), "observation.images.wrist": vid(video_codec[1]),
            "action": {"dtype": "float32", "shape": [2], "names": ["vx", "vy"]},
            "next.reward": {"dtype": "float32", "shape": [1], "names": None},
            "next.done": {"dtype": "bool", "shape": [1], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None}}


def rows_table(eps, ids, start_index, task_ids):
    cols = {"observation.state": [], "observation.environment_state": [], "action": [], "next.reward": [],
            "next.done": [], "timestamp": [], "frame_index": [], "episode_index": [], "index": [], "task_index": []}
    index = start_index
    for e in ids:
        d = eps[e]
        for t in range(len(d["action"])):
            cols["observation.state"].append(d["state"][t].tolist())
            cols["observation.environment_state"].append(d["env"][t].tolist())
            cols["action"].append(d["action"][t].tolist())
            cols["next.reward"].append(float(d["reward"][t]))
            cols["next.done"].append(bool(d["done"][t]))
            cols["timestamp"].append(t / FPS)
            cols["frame_index"].append(t)
            cols["episode_index"].append(e)
            cols["index"].append(index)
            cols["task_index"].append(task_ids[d["task"]])
            index += 1
    types = {"observation.state": pa.list_(pa.float32()), "observation.environment_state": pa.list_(pa.float32()),
             "action": pa.list_(pa.float32()), "next.reward": pa.float32(), "next.done": pa.bool_(),
             "timestamp": pa.float32(), "frame_index": pa.int64(), "episode_index": pa.int64(), "index": pa.int64(),
             "task_index": pa.int64()}
    return pa.table({k: pa.array(v, type=types[k]) for k, v in cols.items()})


def tasks_of(eps):
    return {t: i for i, t in enumerate(dict.fromkeys(d["task"] for d in eps))}


def info(version, eps, splits, data_path, video_path, codecs=("av1", "h264")):
    out = {"codebase_version": version, "robot_type": "pointbot", "total_episodes": len(eps),
           "total_frames": int(sum(len(d["action"]) for d in eps)), "total_tasks": len(tasks_of(eps)),
           "chunks_size": 1000, "fps": FPS, "splits": splits, "data_path": data_path, "video_path": video_path,
           "features": features(codecs)}
    if version == "v3.0":
        out.update({"data_files_size_in_mb": 100, "video_files_size_in_mb": 200})
    else:
        out.update({"total_chunks": 1, "total_videos": 2 * len(eps)})
    return out


def write_v30(root: str, eps, data_files=((0, 1, 2), (3, 4)), video_files=((0, 1), (2, 3, 4))) -> dict:
    """v3.0: episodes grouped into Parquet files by ``data_files`` and into video files (per camera) by
    ``video_files``; camera ``front`` AV1 (LeRobot's default), ``wrist`` H.264. Returns the video file of each
    (camera, episode) and the episode's first frame in it."""
    task_ids = tasks_of(eps)
    rows = {}
    index = 0
    ep_rows = {}
    for fi, ids in enumerate(data_files):
        t = rows_table(eps, ids, index, task_ids)
        p = os.path.join(root, "data", "chunk-000", f"file-{fi:03d}.parquet")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        pq.write_table(t, p)
        for e in ids:
            ep_rows[e] = (fi, index, index + len(eps[e]["action"]))
            index += len(eps[e]["action"])
    where = {}
    for cam, codec in (("front", "libsvtav1"), ("wrist", "libx264")):
        for fi, ids in enumerate(video_files):
            path = os.path.join(root, "videos", f"observation.images.{cam}", "chunk-000", f"file-{fi:03d}.mp4")
            encode(path, np.concatenate([eps[e]["images"][cam] for e in ids]), codec)
            start = 0
            for e in ids:
                where[(cam, e)] = (path, start, fi)
                start += len(eps[e]["action"])
    meta = []
    for e, d in enumerate(eps):
        L = len(d["action"])
        row = {"episode_index": e, "tasks": [d["task"]], "length": L, "data/chunk_index": 0,
               "data/file_index": ep_rows[e][0], "dataset_from_index": ep_rows[e][1],
               "dataset_to_index": ep_rows[e][2]}
        for cam in ("front", "wrist"):
            _, start, fi = where[(cam, e)]
            k = f"videos/observation.images.{cam}"
            row.update({f"{k}/chunk_index": 0, f"{k}/file_index": fi, f"{k}/from_timestamp": start / FPS,
                        f"{k}/to_timestamp": (start + L) / FPS})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    "stats/action/mean": d["action"].mean(0).tolist()})
        meta.append(row)
    p = os.path.join(root, "meta", "episodes", "chunk-000", "file-000.parquet")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(meta), p)
    tasks = pa.table({"task_index": pa.array(list(task_ids.values()), pa.int64()), "task": list(task_ids)})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": []}
    pq.write_table(tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}),
                   os.path.join(root, "meta", "tasks.parquet"))
    n = len(eps)
    with open(os.path.join(root, "meta", "info.json"), "w") as f:
        json.dump(info("v3.0", eps, {"train": f"0:{n - 1}", "valid": f"{n - 1}:{n}"},
                       "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                       "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"), f, indent=4)
    return where


def write_v21(root: str, eps) -> dict:
    """v2.1: one Parquet file and one video per episode and camera, ``episodes.jsonl`` and ``tasks.jsonl``."""
    task_ids = tasks_of(eps)
    index, where = 0, {}
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    with open(os.path.join(root, "meta", "episodes.jsonl"), "w") as fe:
        for e, d in enumerate(eps):
            p = os.path.join(root, "data", "chunk-000", f"episode_{e:06d}.parquet")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            pq.write_table(rows_table(eps, [e], index, task_ids), p)
            index += len(d["action"])
            for cam, codec in (("front", "libsvtav1"), ("wrist", "libx264")):
                path = os.path.join(root, "videos", "chunk-000", f"observation.images.{cam}", f"episode_{e:06d}.mp4")
                encode(path, d["images"][cam], codec)
                where[(cam, e)] = (path, 0, 0)
            fe.write(json.dumps({"episode_index": e, "tasks": [d["task"]], "length": len(d["action"])}) + "\n")
    with open(os.path.join(root, "meta", "tasks.jsonl"), "w") as ft:
        for t, i in task_ids.items():
            ft.write(json.dumps({"task_index": i, "task": t}) + "\n")
    with open(os.path.join(root, "meta", "info.json"), "w") as f:
        json.dump(info("v2.1", eps, {"train": f"0:{len(eps)}"},
                       "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                       "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"), f, indent=4)
    return where
