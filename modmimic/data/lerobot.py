"""Read a local LeRobotDataset folder (``codebase_version`` v2.0, v2.1 or v3.0) into the episode store.

The layout is LeRobot's (``lerobot/datasets/utils.py`` of the version that wrote it):

* ``meta/info.json``: ``codebase_version``, ``fps``, ``features`` (name -> ``{dtype, shape, names, info}``),
  ``data_path`` / ``video_path`` templates, ``splits`` (``{"train": "0:50"}``), totals.
* v3.0: rows in ``data/chunk-XXX/file-YYY.parquet`` (several episodes per file), one video file per camera and
  chunk/file holding several episodes back to back (``videos/<key>/chunk-XXX/file-YYY.mp4``), located by the episode
  table ``meta/episodes/chunk-XXX/file-YYY.parquet`` (``episode_index``, ``length``, ``tasks``,
  ``data/chunk_index``, ``videos/<key>/{chunk_index, file_index, from_timestamp}``); ``meta/tasks.parquet``.
* v2.x: one Parquet file and one video per episode (``data/chunk-XXX/episode_NNNNNN.parquet``,
  ``videos/chunk-XXX/<key>/episode_NNNNNN.mp4``), ``meta/episodes.jsonl`` and ``meta/tasks.jsonl``.

What lands in the store (:class:`modmimic.data.hdf5.EpisodeStore`, the same one the HDF5 reader builds):

* every float/int ``observation.<x>`` feature is the low-dim key ``<x>`` with dots as ``_`` (``observation.state``
  -> ``state``, ``observation.environment_state`` -> ``environment_state``); when ``observation.state`` has
  per-dimension ``names``, each group of names ``<key>.<i>`` (or a single name) is a key too, so a recipe may
  observe ``state`` whole or its parts (``robot0_eef_pos`` = the dims named ``robot0_eef_pos.0..2``);
* ``observation.images.<cam>`` (dtype ``video`` or ``image``) is ``<cam>_image``, uint8 ``[H, W, C]``;
* ``action`` is ``actions``; ``next.reward`` / ``next.done`` are rewards and dones (without ``next.done`` the last
  step of each episode is done); next observations are the observations shifted by one step within the episode,
  the last one repeated (LeRobot stores no observation after the final action);
* episodes (``demo_<episode_index>``) come from ``episode_index``, rows ordered by ``frame_index``; their task strings
  are kept (``store.tasks``); a filter key is a split of ``info.json`` (``"a:b"`` or a list of episode indices).

Parquet is read with pyarrow, video decoded with PyAV (any codec FFmpeg decodes: AV1, H.264, HEVC, ...) in worker
threads, straight into the store (RAM, or the memory-mapped store's row files). Nothing in the folder is executed.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
DEFAULT_WORKERS = 2
ENV_ARGS_KEY = "robomimic_env_args"  # info.json entry written by `modmimic.dataset convert --to lerobot`
ROW_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
FLOAT_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


def _error(msg: str) -> Exception:
    from modmimic.data.episodes import DatasetError

    return DatasetError(msg)


def is_lerobot_root(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "meta", "info.json"))


# --- metadata ---------------------------------------------------------------------------------------------------

class LeRobotMeta:
    """``info.json`` plus the episode table of one LeRobotDataset folder, in one shape for every version:
    ``episodes``: ``[{"index", "length", "tasks", "data_file", "videos": {feature: (file, from_timestamp)}}]``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        info_path = os.path.join(self.root, "meta", "info.json")
        if not os.path.isfile(info_path):
            raise _error(f"{root}: no meta/info.json; not a LeRobotDataset folder")
        try:
            with open(info_path) as f:
                self.info = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _error(f"{info_path}: not valid JSON ({e})") from None
        if not isinstance(self.info, dict):
            raise _error(f"{info_path}: expected a JSON object")
        self.info_path = info_path
        self.version = str(self.info.get("codebase_version"))
        if self.version not in SUPPORTED_VERSIONS:
            raise _error(f"{info_path}: codebase_version {self.info.get('codebase_version')!r} is not one modmimic "
                         f"reads ({', '.join(SUPPORTED_VERSIONS)})")
        self.features = self.info.get("features")
        if not isinstance(self.features, dict) or "action" not in self.features:
            raise _error(f"{info_path}: 'features' must be an object with an 'action' feature")
        try:
            self.fps = int(self.info["fps"])
        except (KeyError, TypeError, ValueError):
            raise _error(f"{info_path}: 'fps' is missing or not a number") from None
        self.tasks = self._read_tasks()
        self.episodes = self._read_v3_episodes() if self.version == "v3.0" else self._read_v2_episodes()
        total = self.info.get("total_episodes")
        if isinstance(total, int) and total != len(self.episodes):
            raise _error(f"{info_path}: total_episodes={total} but the episode table lists {len(self.episodes)}")

    def video_features(self) -> list[str]:
        return [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") == "video"]

    def _path(self, template_key: str, **fields) -> str:
        tmpl = self.info.get(template_key)
        if not isinstance(tmpl, str):
            raise _error(f"{self.info_path}: {template_key!r} is missing")
        try:
            return os.path.join(self.root, tmpl.format(**fields))
        except (KeyError, IndexError, ValueError) as e:
            raise _error(f"{self.info_path}: {template_key} {tmpl!r} cannot be filled ({e})") from None

    def _read_tasks(self) -> dict:
        if self.version == "v3.0":
            path = os.path.join(self.root, "meta", "tasks.parquet")
            if not os.path.exists(path):
                return {}
            t = read_parquet(path)
            names = [c for c in ("task", "__index_level_0__") if c in t.column_names]
            if "task_index" not in t.column_names or not names:
                raise _error(f"{path}: expected columns task_index and task")
            return dict(zip(t.column("task_index").to_pylist(), t.column(names[0]).to_pylist()))
        rows = read_jsonl(os.path.join(self.root, "meta", "tasks.jsonl"), required=False)
        return {r.get("task_index"): r.get("task") for r in rows}

    def _read_v2_episodes(self) -> list[dict]:
        rows = read_jsonl(os.path.join(self.root, "meta", "episodes.jsonl"), required=True)
        chunks = int(self.info.get("chunks_size") or 1000)
        out = []
        for r in sorted(rows, key=lambda r: r.get("episode_index", -1)):
            e = int(r["episode_index"])
            videos = {k: (self._path("video_path", episode_chunk=e // chunks, video_key=k, episode_index=e), 0.0)
                      for k in self.video_features()}
            out.append({"index": e, "length": int(r["length"]), "tasks": list(r.get("tasks") or []),
                        "data_file": self._path("data_path", episode_chunk=e // chunks, episode_index=e),
                        "videos": videos})
        return out

    def _read_v3_episodes(self) -> list[dict]:
        files = sorted(glob.glob(os.path.join(self.root, "meta", "episodes", "chunk-*", "file-*.parquet")))
        if not files:
            raise _error(f"{self.root}: no meta/episodes/chunk-*/file-*.parquet (the v3.0 episode table)")
        out = []
        for path in files:
            t = read_parquet(path)
            need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
            for k in self.video_features():
                need += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
            missing = [c for c in need if c not in t.column_names]
            if missing:
                raise _error(f"{path}: episode table lacks columns {missing}")
            cols = {c: t.column(c).to_pylist() for c in need + (["tasks"] if "tasks" in t.column_names else [])}
            for i in range(t.num_rows):
                videos = {k: (self._path("video_path", video_key=k, chunk_index=cols[f"videos/{k}/chunk_index"][i],
                                         file_index=cols[f"videos/{k}/file_index"][i]),
                              float(cols[f"videos/{k}/from_timestamp"][i])) for k in self.video_features()}
                out.append({"index": int(cols["episode_index"][i]), "length": int(cols["length"][i]),
                            "tasks": list((cols.get("tasks") or [[]] * t.num_rows)[i] or []),
                            "data_file": self._path("data_path", chunk_index=cols["data/chunk_index"][i],
                                                    file_index=cols["data/file_index"][i]),
                            "videos": videos})
        return sorted(out, key=lambda e: e["index"])

    def split(self, name: str) -> list[int]:
        """Episode indices of split ``name`` (``"a:b"`` as LeRobot writes it, or a list of episode indices)."""
        splits = self.info.get("splits") or {}
        if name not in splits:
            raise _error(f"{self.root}: filter key {name!r} is not a split of meta/info.json "
                         f"(available: {sorted(splits)})")
        v = splits[name]
        if isinstance(v, str) and re.fullmatch(r"\d+:\d+", v):
            a, b = (int(x) for x in v.split(":"))
            return list(range(a, b))
        if isinstance(v, list) and all(isinstance(i, int) for i in v):
            return list(v)
        raise _error(f"{self.info_path}: split {name!r} is {v!r}; expected 'start:stop' or a list of episode indices")

    def env_meta(self) -> dict:
        env = self.info.get(ENV_ARGS_KEY)
        return dict(env) if isinstance(env, dict) else {}


def read_parquet(path: str, columns=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise _error(f"{path}: file not found")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _error(f"{path}: cannot read it as Parquet (corrupt or truncated?): {e}") from None


def parquet_columns(path: str) -> list[str]:
    """Column names of a Parquet file (its footer only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise _error(f"{path}: file not found")
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _error(f"{path}: cannot read it as Parquet (corrupt or truncated?): {e}") from None


def read_jsonl(path: str, required: bool) -> list[dict]:
    if not os.path.isfile(path):
        if required:
            raise _error(f"{path}: file not found")
        return []
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise _error(f"{path}: line {n} is not JSON ({e})") from None
    return out


def column_array(table, name: str, path: str) -> np.ndarray:
    """One column as ``[rows, ...]`` numpy (scalar, list or fixed-size-list columns; nested lists flattened)."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    n = len(col)
    while pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    arr = col.to_numpy(zero_copy_only=False)
    if n and arr.size % n:
        raise _error(f"{path}: column {name!r} has rows of different lengths")
    return arr.reshape(n, -1) if n else arr.reshape(0, 1)


# --- observation keys -------------------------------------------------------------------------------------------

def obs_sources(features: dict) -> dict:
    """``{obs key: source}``: ``("low_dim", feature, columns slice, shape)`` or ``("image", feature, shape)``."""
    out, parts = {}, {}
    for name, ft in features.items():
        if not name.startswith("observation.") or not isinstance(ft, dict):
            continue
        rest, shape = name[len("observation."):], tuple(int(s) for s in ft.get("shape") or (1,))
        if ft.get("dtype") in ("video", "image"):
            cam = rest[len("images."):] if rest.startswith("images.") else rest
            out[cam.replace(".", "_") + "_image"] = ("image", name, image_shape(ft))
        elif ft.get("dtype") in FLOAT_DTYPES:
            key = rest.replace(".", "_")
            out[key] = ("low_dim", name, slice(0, int(np.prod(shape))), shape)
            if name == "observation.state" and len(shape) == 1:
                parts = state_groups(ft.get("names"), shape[0])
    for key, (a, b) in parts.items():
        if key not in out:
            out[key] = ("low_dim", "observation.state", slice(a, b), (b - a,))
    return out


def image_shape(ft: dict) -> tuple:
    """``(H, W, C)`` of an image/video feature (LeRobot writes ``[H, W, C]`` with names height/width/channels;
    ``[C, H, W]`` when its names say so)."""
    shape = tuple(int(s) for s in ft.get("shape") or ())
    names = ft.get("names")
    if len(shape) == 3 and isinstance(names, list) and len(names) == 3 and str(names[0]).startswith("channel"):
        return (shape[1], shape[2], shape[0])
    return shape


def state_groups(names, dim: int) -> dict:
    """``{key: (start, stop)}`` of ``observation.state`` from its per-dimension names: consecutive names
    ``<key>.<i>`` form one key, any other name is a 1-D key. Empty when names are absent or not one per dim."""
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if not isinstance(names, list) or len(names) != dim or not all(isinstance(n, str) for n in names):
        return {}
    out, i = {}, 0
    while i < dim:
        m = re.fullmatch(r"(.+)\.(\d+)", names[i])
        j = i + 1
        if m:
            while j < dim and re.fullmatch(re.escape(m.group(1)) + r"\.\d+", names[j]):
                j += 1
        key = (m.group(1) if m else names[i]).replace(".", "_")
        if key in out:
            return {}
        out[key] = (i, j)
        i = j
    return out


# --- rows -------------------------------------------------------------------------------------------------------

def read_rows(meta: LeRobotMeta, episodes: list[dict], columns: list[str]) -> dict:
    """``{episode index: {column: [length, ...] array}}`` from the data files, rows in ``frame_index`` order, with
    each episode's row count checked against the episode table."""
    by_file = {}
    for e in episodes:
        by_file.setdefault(e["data_file"], []).append(e)
    want = {e["index"]: e for e in episodes}
    out = {}
    for path, eps in by_file.items():
        have = parquet_columns(path)
        missing = [c for c in ["episode_index", "frame_index"] + columns if c not in have]
        if missing:
            raise _error(f"{path}: no column {missing[0]!r} (info.json lists it as a feature)")
        t = read_parquet(path, columns=list(dict.fromkeys(
            ["episode_index", "frame_index"] + columns + (["timestamp"] if "timestamp" in have else []))))
        ep_col = column_array(t, "episode_index", path).reshape(-1)
        frame = column_array(t, "frame_index", path).reshape(-1)
        arrays = {c: column_array(t, c, path) for c in columns}
        for e in eps:
            rows = np.nonzero(ep_col == e["index"])[0]
            rows = rows[np.argsort(frame[rows], kind="stable")]
            if len(rows) != e["length"]:
                raise _error(f"{path}: episode {e['index']} has {len(rows)} rows but the episode table "
                             f"(meta/episodes) says length {e['length']}")
            out[e["index"]] = {c: arrays[c][rows] for c in columns}
            if "timestamp" in t.column_names and len(rows) > 1:
                dt = np.diff(column_array(t, "timestamp", path).reshape(-1)[rows].astype(np.float64))
                if np.abs(dt - 1.0 / meta.fps).max() > 1e-4:  # LeRobot's tolerance_s
                    raise _error(f"{path}: episode {e['index']}'s timestamps step by {dt.min():.4g}-{dt.max():.4g} s, "
                                 f"not 1/fps = {1.0 / meta.fps:.4g} s (fps={meta.fps} in meta/info.json)")
            out[e["index"]]["frame_index"] = frame[rows]
    for i in want:
        if i not in out:
            raise _error(f"{meta.root}: episode {i} has no rows in its data file")
    return out


# --- images -----------------------------------------------------------------------------------------------------

def decode_video(path: str, wanted: list, fps: int, shape: tuple) -> list:
    """Frames of one video file: ``wanted`` = ``[(episode, frame numbers in the file)]``; returns
    ``[(episode, uint8 [n, H, W, C])]``. Frame numbers are presentation times times ``fps``."""
    import av

    if not os.path.isfile(path):
        raise _error(f"{path}: video file not found")
    out = [(ep, np.empty((len(idx), *shape), dtype=np.uint8)) for ep, idx in wanted]
    targets = {}  # frame number in the file -> [(episode array, row)]
    for (_, idx), (_, arr) in zip(wanted, out):
        for row, i in enumerate(idx):
            targets.setdefault(int(i), []).append((arr, row))
    found = set()
    fmt = "rgb24" if shape[-1] == 3 else "gray"
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise _error(f"{path}: no video stream")
            stream = c.streams.video[0]
            if stream.codec_context is None or stream.codec_context.name not in av.codecs_available:
                raise _error(f"{path}: video codec {getattr(stream.codec_context, 'name', None)!r} cannot be decoded")
            stream.thread_type = "AUTO"
            last = max(targets) if targets else -1
            for fr in c.decode(stream):
                if fr.pts is None:
                    continue
                k = round(Fraction(fr.pts) * stream.time_base * fps)
                if k in targets and k not in found:
                    img = fr.to_ndarray(format=fmt)
                    if img.shape[:2] != tuple(shape[:2]):
                        raise _error(f"{path}: frames are {img.shape[:2]} pixels but meta/info.json says "
                                     f"{tuple(shape[:2])}")
                    for arr, row in targets[k]:
                        arr[row] = img.reshape(shape)
                    found.add(k)
                if k >= last:
                    break
    except av.FFmpegError as e:
        raise _error(f"{path}: cannot decode the video (corrupt or truncated?): {e}") from None
    for ep, idx in wanted:
        lost = [int(i) for i in idx if int(i) not in found]
        if lost:
            raise _error(f"{path}: episode {ep} needs frame {lost[0]} (t = {lost[0] / fps:.3f} s at {fps} fps) but "
                         f"the video has {len(found)} of the {len(targets)} frames needed (truncated, or frame counts "
                         "that disagree with meta/info.json)")
    return out


def decode_png_column(path: str, feature: str, wanted: list, shape: tuple) -> list:
    """Images of an ``image`` feature stored in a Parquet file (``{bytes, path}`` structs of PNG/JPEG bytes):
    ``wanted`` = ``[(episode, rows of the file)]``."""
    import av

    t = read_parquet(path, columns=[feature])
    col = t.column(feature).combine_chunks()
    out = []
    for ep, rows in wanted:
        imgs = []
        for r in rows:
            v = col[int(r)].as_py()
            data = v.get("bytes") if isinstance(v, dict) else v
            if not data:
                raise _error(f"{path}: {feature} row {int(r)} holds no image bytes (image files outside the "
                             "Parquet file are not read)")
            try:
                with av.open(io.BytesIO(data)) as c:
                    fr = next(c.decode(video=0))
                    imgs.append(fr.to_ndarray(format="rgb24" if shape[-1] == 3 else "gray"))
            except (av.FFmpegError, StopIteration) as e:
                raise _error(f"{path}: {feature} row {int(r)} is not a readable image ({e})") from None
        arr = np.stack(imgs).reshape(len(imgs), *imgs[0].shape[:2], -1)
        if arr.shape[1:] != tuple(shape):
            raise _error(f"{path}: {feature} images are {arr.shape[1:]} but meta/info.json says {tuple(shape)}")
        out.append((ep, arr))
    return out


def check_codec(meta: LeRobotMeta, feature: str) -> None:
    import av

    codec = ((meta.features[feature].get("info") or {}).get("video.codec"))
    if codec is not None and codec not in av.codecs_available:
        raise _error(f"{meta.info_path}: {feature} is encoded with video codec {codec!r}, which PyAV cannot decode")


def image_jobs(meta: LeRobotMeta, feature: str, episodes: list[dict], rows: dict) -> list:
    """Decoding jobs of one image feature: ``(function, args)`` per video file (or Parquet file)."""
    ft = meta.features[feature]
    shape = image_shape(ft)
    jobs = {}
    if ft.get("dtype") == "video":
        check_codec(meta, feature)
        for e in episodes:
            path, start = e["videos"][feature]
            ts = rows[e["index"]]["timestamp"].reshape(-1).astype(np.float64)
            idx = np.rint((start + ts) * meta.fps).astype(np.int64)
            jobs.setdefault(path, []).append((e["index"], idx))
        return [(decode_video, (p, w, meta.fps, shape)) for p, w in jobs.items()]
    for e in episodes:  # image: the episode's rows within its data file
        jobs.setdefault(e["data_file"], []).append(e)
    out = []
    for path, eps in jobs.items():
        t = read_parquet(path, columns=["episode_index", "frame_index"])
        ep_col = column_array(t, "episode_index", path).reshape(-1)
        frame = column_array(t, "frame_index", path).reshape(-1)
        wanted = []
        for e in eps:
            r = np.nonzero(ep_col == e["index"])[0]
            wanted.append((e["index"], r[np.argsort(frame[r], kind="stable")]))
        out.append((decode_png_column, (path, feature, wanted, shape)))
    return out


def _run(job):
    fn, args = job
    return fn(*args)


def run_jobs(jobs: list, workers: int | None):
    """Results of ``jobs`` in order, run by ``workers`` threads (1: here). Not processes: a forked worker inherits
    FFmpeg's thread pools (PyAV's cached frame reformatter) without their threads and waits forever once this
    process has decoded a video (av 18.1.1); spawned workers re-run a user's script that lacks a ``__main__`` guard,
    and loaded 200 Lift episodes (2 x 12 269 frames, h264) in 90 s, against 5.5 s with two threads and 6.0 s in
    one."""
    workers = DEFAULT_WORKERS if workers is None else int(workers)
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            yield _run(j)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(_run, j) for j in jobs]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


# --- the episode store ------------------------------------------------------------------------------------------

class LeRobotSource:
    """One LeRobotDataset folder as a source of episodes: which keys it has, their shapes, and its arrays."""

    def __init__(self, root: str, filter_key: str | None = None, demo_limit: int | None = None):
        self.meta = LeRobotMeta(root)
        eps = self.meta.episodes
        if filter_key is not None:
            keep = set(self.meta.split(filter_key))
            unknown = keep - {e["index"] for e in eps}
            if unknown:
                raise _error(f"{self.meta.info_path}: split {filter_key!r} names episodes that do not exist: "
                             f"{sorted(unknown)[:5]}")
            eps = [e for e in eps if e["index"] in keep]
        if demo_limit is not None:
            eps = eps[:demo_limit]
        self.episodes = eps
        self.sources = obs_sources(self.meta.features)
        total = self.meta.info.get("total_frames")
        if filter_key is None and demo_limit is None and isinstance(total, int) \
                and total != sum(e["length"] for e in eps):
            raise _error(f"{self.meta.info_path}: total_frames={total} but the episodes' lengths add up to "
                         f"{sum(e['length'] for e in eps)}")

    def has_rewards(self) -> bool:
        return "next.reward" in self.meta.features

    def obs_source(self, key: str):
        if key not in self.sources:
            raise _error(f"{self.meta.root}: observation key {key!r} not found (available: {sorted(self.sources)})")
        return self.sources[key]

    def low_dim(self, obs_keys: list[str], rewards: bool) -> dict:
        """``{episode: {"obs": {key: float32 [L, ...]}, "actions", "rewards", "dones"}}``."""
        feats = sorted({self.obs_source(k)[1] for k in obs_keys if self.obs_source(k)[0] == "low_dim"})
        cols = feats + ["action"] + (["next.reward"] + (["next.done"] if "next.done" in self.meta.features else [])
                                     if rewards else [])
        if any(self.sources[k][0] == "image" and self.meta.features[self.sources[k][1]]["dtype"] == "video"
               for k in obs_keys):
            cols.append("timestamp")
        rows = read_rows(self.meta, self.episodes, cols)
        out = {}
        for e in self.episodes:
            r, L = rows[e["index"]], e["length"]
            ep = {"obs": {}, "actions": r["action"].astype(np.float32), "raw": r}
            for k in obs_keys:
                kind, feat, *rest = self.sources[k]
                if kind == "low_dim":
                    sl, shape = rest
                    ep["obs"][k] = r[feat][:, sl].astype(np.float32).reshape(L, *shape)
            if rewards:
                ep["rewards"] = r["next.reward"].reshape(L).astype(np.float32)
                ep["dones"] = (r["next.done"].reshape(L).astype(np.float32) if "next.done" in r
                               else (np.arange(L) == L - 1).astype(np.float32))
            out[e["index"]] = ep
        return out

    def image_jobs(self, key: str, low: dict) -> list:
        _, feat, _ = self.obs_source(key)
        return image_jobs(self.meta, feat, self.episodes, {i: ep["raw"] for i, ep in low.items()})


def shifted(arr: np.ndarray) -> np.ndarray:
    """Next observations of one episode: one step ahead, the last repeated."""
    return np.concatenate([arr[1:], arr[-1:]], axis=0)


def load_lerobot_store(path: str, obs_keys: list[str], action_keys=("actions",), filter_key: str | None = None,
                       load_next_obs: bool = True, load_rewards: bool | None = None, memmap_dir: str | None = None,
                       demo_limit: int | None = None, workers: int | None = None):
    """The :class:`~modmimic.data.hdf5.EpisodeStore` of a LeRobotDataset folder (arguments as
    :func:`modmimic.data.hdf5.load_episode_store`, which calls this for a folder)."""
    import torch

    from modmimic import keys as K
    from modmimic.data import stats as S
    from modmimic.data.episodes import EpisodeStore, check_store_size, has_obs_stats, memmap_store
    from modmimic.data.rowfile import RowFile

    obs_keys, action_keys = list(obs_keys), list(action_keys)
    if action_keys != ["actions"]:
        raise _error(f"{path}: a LeRobotDataset has one action vector ('action', read as 'actions'); "
                     f"train.action_keys is {action_keys}")
    src = LeRobotSource(path, filter_key, demo_limit)
    if not src.episodes:
        raise _error(f"{path}: no episodes" + (f" in split {filter_key}" if filter_key else ""))
    for k in obs_keys:
        src.obs_source(k)
    if load_rewards is None:
        load_rewards = src.has_rewards()
    elif load_rewards and not src.has_rewards():
        raise _error(f"{src.meta.info_path}: no 'next.reward' feature, which this recipe needs")
    low = src.low_dim(obs_keys, load_rewards)
    demos = [f"demo_{e['index']}" for e in src.episodes]
    lengths = [e["length"] for e in src.episodes]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n_total = int(sum(lengths))
    first = low[src.episodes[0]["index"]]
    act_dim = first["actions"].reshape(lengths[0], -1).shape[1]

    float_entries, uint8_entries = [], []  # (batch key, obs key, shape, next?)
    for grp, keyfn in [("obs", K.obs)] + ([("next_obs", K.next_obs)] if load_next_obs else []):
        for k in obs_keys:
            kind, feat, *rest = src.sources[k]
            if kind == "low_dim":
                float_entries.append((keyfn(k), k, tuple(rest[1]), grp == "next_obs"))
            else:
                uint8_entries.append((keyfn(k), k, tuple(rest[0]), grp == "next_obs"))
    columns, width = {}, 0
    for key, _, shape, _ in float_entries:
        n = int(np.prod(shape))
        columns[key] = (width, width + n, shape)
        width += n
    columns[K.ACTION] = (width, width + act_dim, (act_dim,))
    width += act_dim
    if load_rewards:
        columns[K.REWARD] = (width, width + 1, (1,))
        columns[K.DONE] = (width + 1, width + 2, (1,))
        width += 2
    obs_moments = {k: None for k in obs_keys if K.obs(k) in columns and has_obs_stats(columns[K.obs(k)][2])}
    act_moments = {"actions": None}

    def fill_flat(flat):
        for e, L, o in zip(src.episodes, lengths, offsets):
            ep = low[e["index"]]
            block = np.empty((L, width), dtype=np.float32)
            for key, k, _, nxt in float_entries:
                a, b, _ = columns[key]
                block[:, a:b] = (shifted(ep["obs"][k]) if nxt else ep["obs"][k]).reshape(L, -1)
            a, b, _ = columns[K.ACTION]
            acts = ep["actions"].reshape(L, -1)
            if acts.shape[1] != act_dim:
                raise _error(f"{e['data_file']}: episode {e['index']} has {acts.shape[1]}-D actions, "
                             f"episode {src.episodes[0]['index']} has {act_dim}")
            block[:, a:b] = acts
            if load_rewards:
                block[:, columns[K.REWARD][0]] = ep["rewards"]
                block[:, columns[K.DONE][0]] = ep["dones"]
            bad = ~np.isfinite(block)
            if bad.any():
                col = int(np.nonzero(bad.any(axis=0))[0][0])
                key = next(k for k, (s, t, _) in columns.items() if s <= col < t)
                raise _error(f"{e['data_file']}: episode {e['index']} has NaN or Inf values (batch key {key}); "
                             "training on them would diverge")
            for k in obs_moments:
                obs_moments[k] = S.merge_moments(obs_moments[k], S.moments(ep["obs"][k].reshape(L, -1)))
            act_moments["actions"] = S.merge_moments(act_moments["actions"], S.moments(acts))
            flat[int(o):int(o) + L] = torch.from_numpy(block)

    row_of = {e["index"]: (int(o), L) for e, o, L in zip(src.episodes, offsets, lengths)}

    def fill_uint8(put):
        """Decode every image key once; ``put(batch key, first row, frames)`` for obs and next obs."""
        for k in dict.fromkeys(k for _, k, _, _ in uint8_entries):
            targets = [(key, nxt) for key, kk, _, nxt in uint8_entries if kk == k]
            for result in run_jobs(src.image_jobs(k, low), workers):
                for ep, frames in result:
                    o, L = row_of[ep]
                    for key, nxt in targets:
                        put(key, o, shifted(frames) if nxt else frames)

    uint8_files = {key: f"uint8-{i}.rows" for i, (key, _, _, _) in enumerate(uint8_entries)}
    shapes = {key: shape for key, _, shape, _ in uint8_entries}
    layout = {"format": "lerobot-1", "demos": demos, "lengths": lengths, "width": width,
              "columns": {repr(k): [a, b, list(sh)] for k, (a, b, sh) in columns.items()},
              "uint8": {repr(k): [kk, list(sh), uint8_files[k]] for k, kk, sh, _ in uint8_entries},
              "filter_key": filter_key, "action_keys": action_keys}

    def write_uint8_files(folder):
        fds = {}
        try:
            for key, name in uint8_files.items():
                fds[key] = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o644)
                os.ftruncate(fds[key], n_total * int(np.prod(shapes[key])))

            def put(key, row, frames):
                data = np.ascontiguousarray(frames).tobytes()
                os.pwrite(fds[key], data, row * int(np.prod(shapes[key])))
            fill_uint8(put)
        finally:
            for fd in fds.values():
                os.close(fd)

    check_store_size(path, n_total, width, [(k, str(k), sh) for k, sh in shapes.items()], [], memmap_dir)
    memmap_path, reused = None, False
    if memmap_dir is None:
        flat = torch.empty((n_total, width), dtype=torch.float32)
        fill_flat(flat)
        uint8 = {key: torch.empty((n_total, *shape), dtype=torch.uint8) for key, shape in shapes.items()}
        fill_uint8(lambda key, row, frames: uint8[key][row:row + len(frames)].copy_(torch.from_numpy(frames)))
    else:
        flat, memmap_path, reused, moments = memmap_store(path, memmap_dir, layout, (n_total, width), fill_flat,
                                                          lambda: (obs_moments, act_moments), write_uint8_files)
        obs_moments, act_moments = moments
        uint8 = {key: RowFile(os.path.join(memmap_path, uint8_files[key]), (n_total, *shapes[key]))
                 for key in shapes}
    tasks = [" / ".join(str(src.meta.tasks.get(t, t)) if isinstance(t, int) else str(t) for t in e["tasks"])
             for e in src.episodes]
    return EpisodeStore(
        path=path, demos=demos, lengths=torch.tensor(lengths, dtype=torch.int64),
        offsets=torch.from_numpy(offsets), flat=flat, columns=columns, uint8=uint8, obs_keys=obs_keys,
        action_keys=action_keys, env_meta=src.meta.env_meta(), obs_moments=obs_moments,
        action_moments=act_moments, memmap_path=memmap_path, memmap_reused=reused, tasks=tasks)


from modmimic.data.episodes import folder_digest  # noqa: E402,F401  (re-exported)
