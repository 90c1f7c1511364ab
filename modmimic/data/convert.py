"""Conversions between dataset formats (``python -m modmimic.dataset convert``).

* robomimic HDF5 -> LeRobotDataset v3.0 (:func:`robomimic_to_lerobot`): low-dim observations concatenated into
  ``observation.state`` (float32, per-dimension names ``<key>.<i>`` so the reader splits them back), other float
  observations as ``observation.<key>``, ``<cam>_image`` as ``observation.images.<cam>``: video (PyAV; AV1 with
  LeRobot's settings by default, lossy) or, with ``lossless``, ``image`` features holding PNG bytes in the Parquet
  rows; ``actions`` -> ``action``, ``rewards``/``dones`` -> ``next.reward``/``next.done``; masks -> ``splits``;
  ``env_args`` -> ``info.json["robomimic_env_args"]``.
* LeRobotDataset (v2.x, v3.0) -> robomimic HDF5 (:func:`lerobot_to_robomimic`), with the reader of
  :mod:`modmimic.data.lerobot`.
* D4RL-style HDF5 (``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``) and Minari datasets
  (through ``minari``'s reader) -> robomimic HDF5 (:func:`d4rl_to_robomimic`, :func:`minari_to_robomimic`).

Every converter writes into a temporary path beside the output and renames it into place when complete; an existing
output is replaced only with ``overwrite``. Bad input raises :class:`modmimic.data.hdf5.DatasetError`.
"""
from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np

from modmimic.data import lerobot as L

CODECS = ("libsvtav1", "h264", "hevc")
ENCODERS = {"libsvtav1": "libsvtav1", "h264": "libx264", "hevc": "libx265"}
VIDEO_FILE_MB = 200  # LeRobot's DEFAULT_VIDEO_FILE_SIZE_IN_MB, here of decoded frames (bounds decode memory)
DATA_FILE_MB = 100  # LeRobot's DEFAULT_DATA_FILE_SIZE_IN_MB
CHUNKS_SIZE = 1000


def _error(msg):
    return L._error(msg)


def check_output(out_path: str, overwrite: bool) -> None:
    if os.path.lexists(out_path) and not overwrite:
        raise _error(f"{out_path} exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise _error(f"{parent}: the output's directory does not exist")


def put_in_place(tmp: str, out_path: str) -> None:
    if os.path.isdir(out_path) and not os.path.islink(out_path):
        shutil.rmtree(out_path)
    elif os.path.lexists(out_path):
        os.unlink(out_path)
    os.rename(tmp, out_path)


def _tmp_beside(out_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(out_path)),
                        f".{os.path.basename(out_path)}.partial-{os.getpid()}")


def _discard(tmp: str) -> None:
    if os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.exists(tmp):
        os.unlink(tmp)


# --- robomimic -> LeRobot ---------------------------------------------------------------------------------------

def _open_robomimic(path: str, filter_key: str | None):
    from modmimic.data.hdf5 import list_demos, open_hdf5

    f = open_hdf5(path)
    try:
        demos = list_demos(f, filter_key, path)
    except Exception:
        f.close()
        raise
    if not demos:
        f.close()
        raise _error(f"{path}: no demos")
    return f, demos


def _classify_obs(demo, path: str) -> tuple[list, list, list]:
    """``(low-dim keys, other float keys, image keys)`` of a demo's ``obs`` group."""
    if "obs" not in demo:
        raise _error(f"{path}: {demo.name} has no obs group")
    low, other, images = [], [], []
    for k in sorted(demo["obs"]):
        ds = demo["obs"][k]
        if ds.dtype == np.uint8 and ds.ndim == 4 and ds.shape[-1] in (1, 3):
            images.append(k)
        elif ds.dtype.kind in "fiub" and ds.ndim <= 2:
            low.append(k)
        elif ds.dtype.kind in "fiub":
            other.append(k)
    return low, other, images


def _camera(key: str) -> str:
    return key[:-len("_image")] if key.endswith("_image") else key


class VideoWriter:
    """Episodes of one camera appended to ``videos/<feature>/chunk-XXX/file-YYY.mp4``, a new file when the decoded
    frames of the current one pass :data:`VIDEO_FILE_MB`. ``add`` returns the episode's file and timestamps."""

    def __init__(self, root: str, feature: str, fps: int, codec: str, crf: int | None):
        self.root, self.feature, self.fps, self.codec, self.crf = root, feature, fps, codec, crf
        self.container = self.stream = None
        self.file_index, self.frames_in_file, self.bytes_in_file = -1, 0, 0

    def _open(self, h: int, w: int):
        import av

        self.close()
        self.file_index += 1
        chunk, file = divmod(self.file_index, CHUNKS_SIZE)
        self.where = (chunk, file)
        path = os.path.join(self.root, "videos", self.feature, f"chunk-{chunk:03d}", f"file-{file:03d}.mp4")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        opts = {"g": "2"}
        if self.codec == "libsvtav1":
            opts.update({"crf": str(30 if self.crf is None else self.crf), "preset": "12", "svtav1-params": "log=1"})
        else:
            opts["crf"] = str(23 if self.crf is None else self.crf)
            if self.codec == "hevc":
                opts["x265-params"] = "log-level=error"
        av.logging.set_level(av.logging.ERROR)
        self.container = av.open(path, "w")
        self.stream = self.container.add_stream(ENCODERS[self.codec], rate=self.fps, options=opts)
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
        self.frames_in_file, self.bytes_in_file = 0, 0

    def add(self, frames: np.ndarray) -> dict:
        import av

        T, h, w, _ = frames.shape
        if self.container is None or self.bytes_in_file + frames.nbytes > VIDEO_FILE_MB * 1e6 \
                and self.frames_in_file > 0:
            self._open(h, w)
        start = self.frames_in_file
        for t in range(T):
            img = frames[t] if frames.shape[-1] == 3 else np.repeat(frames[t], 3, axis=-1)
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            fr.pts = start + t
            for p in self.stream.encode(fr):
                self.container.mux(p)
        self.frames_in_file += T
        self.bytes_in_file += frames.nbytes
        k = f"videos/{self.feature}"
        return {f"{k}/chunk_index": self.where[0], f"{k}/file_index": self.where[1],
                f"{k}/from_timestamp": start / self.fps, f"{k}/to_timestamp": (start + T) / self.fps}

    def close(self):
        if self.container is not None:
            for p in self.stream.encode():
                self.container.mux(p)
            self.container.close()
            self.container = None


def png_bytes(img: np.ndarray) -> bytes:
    import av

    ctx = av.CodecContext.create("png", "w")
    h, w, c = img.shape
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "rgb24" if c == 3 else "gray"
    fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img if c == 3 else img[..., 0]),
                                    format="rgb24" if c == 3 else "gray")
    return b"".join(bytes(p) for p in ctx.encode(fr)) + b"".join(bytes(p) for p in ctx.encode(None))


def _vector_column(arr: np.ndarray):
    import pyarrow as pa

    arr = np.ascontiguousarray(arr)
    if arr.ndim == 1:
        return pa.array(arr)
    flat = arr.reshape(len(arr), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _tasks_table(tasks: list[str]):
    import pyarrow as pa

    table = pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64)), "task": pa.array(tasks)})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def robomimic_to_lerobot(in_path: str, out_path: str, lossless: bool = False, codec: str = "libsvtav1",
                         crf: int | None = None, fps: int = 20, task: str | None = None, filter_key: str | None = None,
                         overwrite: bool = False, progress=None) -> dict:
    """Write ``in_path`` (robomimic HDF5) as a LeRobotDataset v3.0 folder ``out_path``; returns a summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if codec not in CODECS:
        raise _error(f"video codec {codec!r} is not one of {', '.join(CODECS)}")
    check_output(out_path, overwrite)
    f, demos = _open_robomimic(in_path, filter_key)
    tmp = _tmp_beside(out_path)
    _discard(tmp)
    try:
        with f:
            data = f["data"]
            low, other, images = _classify_obs(data[demos[0]], in_path)
            env_raw = data.attrs.get("env_args")
            env_args = None
            if env_raw is not None:
                from modmimic.data.hdf5 import parse_env_args

                env_args = parse_env_args(env_raw, in_path)
            first = data[demos[0]]
            dims = {k: int(np.prod(first["obs"][k].shape[1:])) for k in low}
            names = [f"{k}.{i}" for k in low for i in range(dims[k])]
            act_dim = int(np.prod(first["actions"].shape[1:]))
            has_rewards = all("rewards" in data[d] and "dones" in data[d] for d in demos)
            features = {}
            if low:
                features["observation.state"] = {"dtype": "float32", "shape": [len(names)], "names": names}
            for k in other:
                features[f"observation.{k}"] = {"dtype": "float32", "shape": list(first["obs"][k].shape[1:]),
                                                "names": None}
            for k in images:
                h, w, c = first["obs"][k].shape[1:]
                ft = {"dtype": "image" if lossless else "video", "shape": [h, w, c],
                      "names": ["height", "width", "channels"]}
                if not lossless:
                    ft["info"] = {"video.height": h, "video.width": w, "video.codec": "av1" if codec == "libsvtav1"
                                  else codec, "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                                  "video.fps": fps, "video.channels": c, "has_audio": False}
                features[f"observation.images.{_camera(k)}"] = ft
            features["action"] = {"dtype": "float32", "shape": [act_dim], "names": None}
            if has_rewards:
                features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
                features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
            for name, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                             ("index", "int64"), ("task_index", "int64")):
                features[name] = {"dtype": dt, "shape": [1], "names": None}

            task_str = task or (env_args or {}).get("env_name") or os.path.splitext(os.path.basename(in_path))[0]
            videos = {} if lossless else {k: VideoWriter(tmp, f"observation.images.{_camera(k)}", fps, codec, crf)
                                          for k in images}
            episodes, tables, file_index, table_bytes, index = [], [], 0, 0, 0

            def flush():
                nonlocal tables, file_index, table_bytes
                if not tables:
                    return
                chunk, file = divmod(file_index, CHUNKS_SIZE)
                p = os.path.join(tmp, "data", f"chunk-{chunk:03d}", f"file-{file:03d}.parquet")
                os.makedirs(os.path.dirname(p), exist_ok=True)
                pq.write_table(pa.concat_tables(tables), p)
                tables, file_index, table_bytes = [], file_index + 1, 0

            os.makedirs(tmp)
            for e, d in enumerate(demos):
                g = data[d]
                T = int(np.asarray(g.attrs.get("num_samples", len(g["actions"]))).reshape(()))
                cols = {}
                if low:
                    cols["observation.state"] = _vector_column(np.concatenate(
                        [np.asarray(g["obs"][k][()], dtype=np.float32).reshape(T, -1) for k in low], axis=1))
                for k in other:
                    cols[f"observation.{k}"] = _vector_column(np.asarray(g["obs"][k][()], dtype=np.float32))
                ep = {"episode_index": e, "tasks": [task_str], "length": T}
                for k in images:
                    frames = g["obs"][k][()]
                    if lossless:
                        cols[f"observation.images.{_camera(k)}"] = pa.array(
                            [{"bytes": png_bytes(im), "path": f"frame-{t:06d}.png"} for t, im in enumerate(frames)],
                            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
                    else:
                        ep.update(videos[k].add(frames))
                cols["action"] = _vector_column(np.asarray(g["actions"][()], dtype=np.float32).reshape(T, -1))
                if has_rewards:
                    cols["next.reward"] = pa.array(np.asarray(g["rewards"][()], dtype=np.float32).reshape(T))
                    cols["next.done"] = pa.array(np.asarray(g["dones"][()]).reshape(T) != 0)
                cols["timestamp"] = pa.array((np.arange(T) / fps).astype(np.float32))
                cols["frame_index"] = pa.array(np.arange(T, dtype=np.int64))
                cols["episode_index"] = pa.array(np.full(T, e, dtype=np.int64))
                cols["index"] = pa.array(np.arange(index, index + T, dtype=np.int64))
                cols["task_index"] = pa.array(np.zeros(T, dtype=np.int64))
                t = pa.table(cols)
                if tables and table_bytes + t.nbytes > DATA_FILE_MB * 1e6:
                    flush()
                chunk, file = divmod(file_index, CHUNKS_SIZE)
                ep.update({"data/chunk_index": chunk, "data/file_index": file, "dataset_from_index": index,
                           "dataset_to_index": index + T, "meta/episodes/chunk_index": 0,
                           "meta/episodes/file_index": 0})
                tables.append(t)
                table_bytes += t.nbytes
                index += T
                episodes.append(ep)
                if progress is not None and (e + 1) % 50 == 0:
                    progress(f"  {e + 1}/{len(demos)} episodes")
            flush()
            for v in videos.values():
                v.close()
            p = os.path.join(tmp, "meta", "episodes", "chunk-000", "file-000.parquet")
            os.makedirs(os.path.dirname(p))
            pq.write_table(pa.Table.from_pylist(episodes), p)
            pq.write_table(_tasks_table([task_str]), os.path.join(tmp, "meta", "tasks.parquet"))
            splits = {}
            if "mask" in f:
                pos = {d: i for i, d in enumerate(demos)}
                for name in f["mask"]:
                    ids = sorted(pos[n.decode() if isinstance(n, bytes) else str(n)]
                                 for n in np.asarray(f["mask"][name]).ravel()
                                 if (n.decode() if isinstance(n, bytes) else str(n)) in pos)
                    contiguous = ids and ids == list(range(ids[0], ids[-1] + 1))
                    splits[name] = f"{ids[0]}:{ids[-1] + 1}" if contiguous else ids
            splits.setdefault("train", f"0:{len(demos)}")
            info = {"codebase_version": "v3.0", "robot_type": None, "total_episodes": len(demos),
                    "total_frames": index, "total_tasks": 1, "chunks_size": CHUNKS_SIZE,
                    "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB, "fps": fps,
                    "splits": splits, "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                    "video_path": None if (lossless or not images) else
                    "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
                    "features": features}
            if env_args is not None:
                info[L.ENV_ARGS_KEY] = env_args
            with open(os.path.join(tmp, "meta", "info.json"), "w") as fh:
                json.dump(info, fh, indent=4)
        put_in_place(tmp, out_path)
    except BaseException:
        _discard(tmp)
        raise
    return {"episodes": len(demos), "frames": index, "path": os.path.abspath(out_path),
            "images": ("png" if lossless else codec) if images else None}


# --- LeRobot -> robomimic ---------------------------------------------------------------------------------------

def lerobot_to_robomimic(in_path: str, out_path: str, overwrite: bool = False, workers: int | None = None,
                         progress=None) -> dict:
    """Write the LeRobotDataset folder ``in_path`` as robomimic HDF5 ``out_path``: ``obs``/``next_obs`` per key
    (``observation.state`` split by its names when they group, else ``state``), ``actions``, ``rewards``/``dones``
    when the data has rewards, masks from the splits, ``env_args`` when the folder names them."""
    check_output(out_path, overwrite)
    src = L.LeRobotSource(in_path)
    if not src.episodes:
        raise _error(f"{in_path}: no episodes")
    keys = list(src.sources)
    if any(src.sources[k][1] == "observation.state" and k != "state" for k in keys):
        keys.remove("state")  # its parts are written instead
    low_keys = [k for k in keys if src.sources[k][0] == "low_dim"]
    img_keys = [k for k in keys if src.sources[k][0] == "image"]
    rewards = src.has_rewards()
    low = src.low_dim(keys, rewards)
    names = {e["index"]: f"demo_{e['index']}" for e in src.episodes}
    tmp = _tmp_beside(out_path)
    _discard(tmp)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            for e in src.episodes:
                ep, g = low[e["index"]], data.create_group(names[e["index"]])
                g.attrs["num_samples"] = e["length"]
                for k in low_keys:
                    g.create_dataset(f"obs/{k}", data=ep["obs"][k])
                    g.create_dataset(f"next_obs/{k}", data=L.shifted(ep["obs"][k]))
                g.create_dataset("actions", data=ep["actions"].reshape(e["length"], -1))
                if rewards:
                    g.create_dataset("rewards", data=ep["rewards"])
                    g.create_dataset("dones", data=ep["dones"].astype(np.int64))
                if e["tasks"]:
                    g.attrs["task"] = " / ".join(str(src.meta.tasks.get(t, t)) if isinstance(t, int) else str(t)
                                                 for t in e["tasks"])
            for k in img_keys:
                for result in L.run_jobs(src.image_jobs(k, low), workers):
                    for ep_index, frames in result:
                        g = data[names[ep_index]]
                        g.create_dataset(f"obs/{k}", data=frames)
                        g.create_dataset(f"next_obs/{k}", data=L.shifted(frames))
            data.attrs["total"] = sum(e["length"] for e in src.episodes)
            env = src.meta.env_meta()
            if env:
                data.attrs["env_args"] = json.dumps(env)
            for split in (src.meta.info.get("splits") or {}):
                ids = set(src.meta.split(split))
                f.create_dataset(f"mask/{split}", data=np.array(
                    [names[e["index"]] for e in src.episodes if e["index"] in ids], dtype="S"))
        put_in_place(tmp, out_path)
    except BaseException:
        _discard(tmp)
        raise
    return {"episodes": len(src.episodes), "frames": int(data_total(src)), "path": os.path.abspath(out_path),
            "keys": keys}


def data_total(src) -> int:
    return sum(e["length"] for e in src.episodes)


# --- D4RL and Minari -> robomimic --------------------------------------------------------------------------------

def split_episodes(terminals: np.ndarray, timeouts: np.ndarray | None) -> list[tuple[int, int]]:
    """``[(start, stop)]`` row ranges of the episodes of a flat D4RL buffer: an episode ends at a row whose terminal
    or timeout flag is set (that row included); rows after the last end form a final, unfinished episode."""
    ends = np.asarray(terminals).reshape(-1).astype(bool)
    if timeouts is not None:
        ends = ends | np.asarray(timeouts).reshape(-1).astype(bool)
    stops = (np.nonzero(ends)[0] + 1).tolist()
    n = len(ends)
    if not stops or stops[-1] != n:
        stops.append(n)
    starts = [0] + stops[:-1]
    return [(a, b) for a, b in zip(starts, stops) if b > a]


def write_demos(out_path: str, demos, env_args: dict | None, overwrite: bool) -> dict:
    """robomimic HDF5 from an iterable of ``{"obs": {k: [T, ...]}, "next_obs": {...}, "actions", "rewards",
    "dones"}``, demo by demo, into a temporary file renamed into place; ``mask/train`` lists every demo."""
    check_output(out_path, overwrite)
    tmp = _tmp_beside(out_path)
    _discard(tmp)
    total, n = 0, 0
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            for i, d in enumerate(demos):
                g = data.create_group(f"demo_{i}")
                T = len(d["actions"])
                g.attrs["num_samples"] = T
                for grp in ("obs", "next_obs"):
                    for k, v in d[grp].items():
                        g.create_dataset(f"{grp}/{k}", data=v)
                for k in ("actions", "rewards", "dones"):
                    g.create_dataset(k, data=d[k])
                total, n = total + T, n + 1
            if n == 0:
                raise _error("the input holds no episodes")
            data.attrs["total"] = total
            if env_args is not None:
                data.attrs["env_args"] = json.dumps(env_args)
            f.create_dataset("mask/train", data=np.array([f"demo_{i}" for i in range(n)], dtype="S"))
        put_in_place(tmp, out_path)
    except BaseException:
        _discard(tmp)
        raise
    return {"episodes": n, "frames": total, "path": os.path.abspath(out_path)}


def is_d4rl(path: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return all(k in f for k in ("observations", "actions", "rewards", "terminals"))
    except OSError:
        return False


def d4rl_to_robomimic(in_path: str, out_path: str, env_name: str | None = None, overwrite: bool = False) -> dict:
    """A D4RL-style HDF5 (flat ``observations [N, D]``, ``actions``, ``rewards``, ``terminals``, ``timeouts``,
    optional ``next_observations``) as robomimic HDF5: one demo per episode (split on terminals/timeouts), the
    observation as key ``flat`` (robomimic's D4RL convention), dones = terminals, next observations from
    ``next_observations`` or the following row (the last row of an episode repeated)."""
    env_args, demos = d4rl_demos(in_path, env_name)
    return write_demos(out_path, demos, env_args, overwrite)


def d4rl_demos(in_path: str, env_name: str | None = None):
    """``(env_args, demos)`` of a D4RL-style file: the episodes as robomimic demo dicts (see
    :func:`d4rl_to_robomimic`)."""
    from modmimic.data.hdf5 import open_hdf5

    with open_hdf5(in_path) as f:
        for k in ("observations", "actions", "rewards", "terminals"):
            if not isinstance(f.get(k), h5py.Dataset):
                raise _error(f"{in_path}: no {k!r} dataset; not a D4RL-style file")
        obs = np.asarray(f["observations"][()], dtype=np.float32)
        acts = np.asarray(f["actions"][()], dtype=np.float32)
        rews = np.asarray(f["rewards"][()], dtype=np.float32).reshape(-1)
        terms = np.asarray(f["terminals"][()]).reshape(-1)
        touts = np.asarray(f["timeouts"][()]).reshape(-1) if "timeouts" in f else None
        nxt = np.asarray(f["next_observations"][()], dtype=np.float32) if "next_observations" in f else None
        n = len(obs)
        for name, arr in (("actions", acts), ("rewards", rews), ("terminals", terms), ("timeouts", touts),
                          ("next_observations", nxt)):
            if arr is not None and len(arr) != n:
                raise _error(f"{in_path}: {name} has {len(arr)} rows but observations has {n}")
        name = env_name or (f.attrs.get("env_name") if "env_name" in f.attrs else None)
    name = name.decode() if isinstance(name, bytes) else name
    ranges = split_episodes(terms, touts)

    def demos():
        for a, b in ranges:
            o = obs[a:b].reshape(b - a, -1)
            no = nxt[a:b].reshape(b - a, -1) if nxt is not None else L.shifted(o)
            yield {"obs": {"flat": o}, "next_obs": {"flat": no}, "actions": acts[a:b].reshape(b - a, -1),
                   "rewards": rews[a:b], "dones": (terms[a:b] != 0).astype(np.int64)}

    env_args = {"env_name": name or os.path.splitext(os.path.basename(in_path))[0], "type": 2, "env_version": None,
                "env_kwargs": {}}
    return env_args, demos()


def is_minari(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "metadata.json"))
                                    or os.path.isfile(os.path.join(path, "data", "metadata.json")))


def _obs_dict(o, n: int) -> dict:
    """Minari observations (``n + 1`` rows) as ``{key: array}``: dict spaces per key (nested keys joined with
    ``/``), anything else as ``flat``."""
    if isinstance(o, dict):
        out = {}
        for k, v in o.items():
            for kk, vv in _obs_dict(v, n).items():
                out[k if kk == "flat" else f"{k}/{kk}"] = vv
        return out
    arr = np.asarray(o)
    return {"flat": arr if arr.dtype == np.uint8 else arr.astype(np.float32)}


def minari_to_robomimic(in_path: str, out_path: str, overwrite: bool = False) -> dict:
    """A local Minari dataset (its folder, read with ``minari.MinariDataset``) as robomimic HDF5: observations per
    key of a dict space (else ``flat``), next observations from the episode's ``T + 1`` observations, dones =
    terminations; ``env_args`` from the dataset's environment spec (a gymnasium environment, type 2)."""
    env_args, demos = minari_demos(in_path)
    return write_demos(out_path, demos, env_args, overwrite)


def minari_demos(in_path: str):
    """``(env_args, demos)`` of a local Minari dataset (see :func:`minari_to_robomimic`)."""
    try:
        import minari
    except ImportError as e:
        raise _error(f"reading Minari datasets needs the 'minari' package ({e})") from None
    data_dir = os.path.join(in_path, "data") if os.path.isdir(os.path.join(in_path, "data")) else in_path
    try:
        ds = minari.MinariDataset(data_dir)
    except Exception as e:  # minari raises a variety of errors for a bad folder
        raise _error(f"{in_path}: cannot read it as a Minari dataset ({type(e).__name__}: {e})") from None
    spec = getattr(ds, "env_spec", None)
    env_args = {"env_name": getattr(spec, "id", None) or getattr(ds, "id", None), "type": 2, "env_version": None,
                "env_kwargs": dict(getattr(spec, "kwargs", {}) or {})}
    try:
        env_args = json.loads(json.dumps(env_args, default=str))
    except (TypeError, ValueError):
        env_args["env_kwargs"] = {}

    def demos():
        for ep in ds.iterate_episodes():
            T = len(ep.actions)
            obs = _obs_dict(ep.observations, T)
            yield {"obs": {k: v[:T] for k, v in obs.items()}, "next_obs": {k: v[1:T + 1] for k, v in obs.items()},
                   "actions": np.asarray(ep.actions, dtype=np.float32).reshape(T, -1),
                   "rewards": np.asarray(ep.rewards, dtype=np.float32).reshape(T),
                   "dones": np.asarray(ep.terminations).reshape(T).astype(np.int64)}

    return env_args, demos()


def episodes_info(path: str, fmt: str, env_args: dict | None, demos) -> dict:
    """``python -m modmimic.dataset info`` of a D4RL-style file or a Minari dataset, in the shape of
    :func:`modmimic.dataset.dataset_info`: the demos a conversion to robomimic would write, their keys (shape per step,
    dtype, range), lengths and environment."""
    keys, lengths, errors = {}, [], []

    def add(name, arr):
        arr = np.asarray(arr)
        e = keys.setdefault(name, {"shape": list(arr.shape[1:]), "dtype": str(arr.dtype), "min": None, "max": None})
        if arr.size and arr.dtype != np.uint8:
            finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
            if finite.size < arr.size:
                e["non_finite_in"] = e.get("non_finite_in", 0) + 1
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                e["min"] = lo if e["min"] is None else min(e["min"], lo)
                e["max"] = hi if e["max"] is None else max(e["max"], hi)

    for d in demos:
        lengths.append(len(d["actions"]))
        for grp in ("obs", "next_obs"):
            for k, v in d[grp].items():
                add(f"{grp}/{k}", v)
        for k in ("actions", "rewards", "dones"):
            add(k, d[k])
    if not lengths:
        raise _error(f"{path}: no episodes")
    for k, e in keys.items():
        if e.get("non_finite_in"):
            errors.append(f"{path}: {k} has NaN or Inf values in {e['non_finite_in']} episodes")
    L = np.array(lengths)
    act = keys["actions"]
    return {"path": path, "filter_key": None, "format": fmt, "fps": "n/a", "num_demos": len(L),
            "num_samples": int(L.sum()), "total_attr": None,
            "length": {"min": int(L.min()), "mean": float(L.mean()), "max": int(L.max())}, "env_meta": env_args,
            "filter_keys": {}, "keys": keys, "warnings": [], "errors": errors,
            "actions_in_unit_range": None if act["min"] is None else bool(act["min"] >= -1 and act["max"] <= 1)}
