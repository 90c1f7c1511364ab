"""Read robomimic HDF5 files (layout in robomimic's docs; see reference §4) into one contiguous episode store.

Every float entry of every step (observations, next observations, the action vector, reward, done) becomes a column
range of one ``[N, D]`` float32 buffer, demos back to back in robomimic's order (``demo_<int>`` sorted by the
integer). uint8 observations (images, ``[H, W, C]`` per step) keep their dtype and layout in their own ``[N, ...]``
stores, untouched (1 byte per pixel; they become float on the training device). The buffer lives in RAM or, given
``memmap_dir``, in a memory-mapped file filled demo by demo (for data larger than RAM); there the images go to raw
row files read with ``pread`` (:class:`modmimic.data.rowfile.RowFile`), shared by every process through the page cache.

Normalization statistics cover low-dim observations only, as robomimic: uint8 images and float per-step arrays with
three or more dimensions (depth ``[H, W, 1]``) get none.
"""
from __future__ import annotations

import json
import os
import warnings

import h5py
import numpy as np
import torch

from modmimic import keys as K
from modmimic.data import check as C
from modmimic.data import stats as S
from modmimic.data.rowfile import RowFile, write_rows

from modmimic.data.episodes import (MEMMAP_FORMAT, DatasetError, EpisodeStore, _test_slow_memmap,  # noqa: F401
                                    check_store_size, file_digest, has_obs_stats, memmap_store)


def open_hdf5(path: str) -> h5py.File:
    problem = C.path_problem(path)
    if problem:
        raise DatasetError(problem)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"cannot read {path} as HDF5 (corrupt or not an HDF5 file): {e}") from None


def _demo_sort_key(name: str) -> int:
    return int(name[5:])


def list_demos(f: h5py.File, filter_key: str | None = None, path: str = "") -> list[str]:
    """Demo names in robomimic's order, optionally restricted to ``mask/<filter_key>``. Groups of ``data/`` not
    named ``demo_<N>`` are skipped with a warning (all of them alike: ``episode_2``, ``demo_x``, ``demo_..``); a mask
    that names one, names a demo twice or names a demo that does not exist is an error."""
    if not isinstance(f.get("data"), h5py.Group):
        raise DatasetError(f"{path}: no 'data' group; not a robomimic dataset")
    if filter_key is not None:
        if not isinstance(f.get("mask"), h5py.Group) or not isinstance(f["mask"].get(filter_key), h5py.Dataset):
            have = sorted(f["mask"].keys()) if isinstance(f.get("mask"), h5py.Group) else []
            raise DatasetError(f"{path}: filter key {filter_key!r} not found in mask/ (available: {have})")
        try:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(f["mask"][filter_key]).ravel()]
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}: mask/{filter_key} holds names that are not UTF-8 ({e})") from None
        twice = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) < len(names) else []
        if twice:
            raise DatasetError(f"{path}: mask/{filter_key} lists {', '.join(map(repr, twice[:5]))} more than once; "
                               "each demo may appear once in a filter key")
        odd = [n for n in names if not C.DEMO_NAME.match(n)]
        if odd:
            raise DatasetError(f"{path}: mask/{filter_key} names {', '.join(map(repr, odd[:5]))}, not demo_<N> "
                               "groups; a filter key lists demos")
        missing = [n for n in names if n not in f["data"]]
        if missing:
            raise DatasetError(f"{path}: mask/{filter_key} names demos that do not exist: {missing[:5]}")
    else:
        names = [n for n in f["data"].keys() if C.DEMO_NAME.match(n)]
        skipped = C.skipped_warning(path, C.skipped_groups(f["data"]))
        if skipped:
            warnings.warn(skipped, stacklevel=2)
    return sorted(names, key=_demo_sort_key)


def read_env_meta(path: str) -> dict:
    with open_hdf5(path) as f:
        if "data" not in f:
            raise DatasetError(f"{path}: no 'data' group; not a robomimic dataset")
        raw = f["data"].attrs.get("env_args")
        if raw is None:
            return {}
        return parse_env_args(raw, path)


def parse_env_args(raw, path: str) -> dict:
    """``data.attrs['env_args']``: a JSON object (robomimic's environment metadata)."""
    from modmimic.stored import StoredFileError, loads_json

    try:
        out = loads_json(raw, "data.attrs['env_args']")
    except StoredFileError as e:
        raise DatasetError(f"{path}: {e}") from None
    if not isinstance(out, dict):
        raise DatasetError(f"{path}: data.attrs['env_args'] is {type(out).__name__} JSON, expected an object")
    return out


def read_model_file(demo: h5py.Group) -> str | None:
    """A demo's MJCF XML: robomimic's string attribute ``model_file``, or the gzip-compressed ``uint8`` dataset
    ``model_file`` that :class:`modmimic.rollout.DatasetWriter` writes with ``model_file="gzip"`` (the embedded
    default dataset does). None when the demo has neither."""
    if "model_file" in demo.attrs:
        v = demo.attrs["model_file"]
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    if "model_file" in demo:
        return np.asarray(demo["model_file"][()], dtype=np.uint8).tobytes().decode("utf-8")
    return None


def _dataset_in_demo(demo: h5py.Group, name: str):
    """Resolve ``actions``, ``rewards``, ``action_dict/abs_pos`` ... inside one demo group (None when absent). A
    link to another file is a :class:`DatasetError`: modmimic reads only what the dataset file itself holds."""
    problem = C.link_problem(demo, name)
    if problem:
        raise DatasetError(f"{demo.file.filename}: {problem}")
    try:
        return demo[name]
    except KeyError:
        return None


def hdf5_demo_task(group) -> str | None:
    """An HDF5 demo's task: its ``task`` attribute, else its ``ep_meta`` JSON's ``lang`` or ``task``."""
    t = group.attrs.get("task")
    if t is not None:
        return t.decode() if isinstance(t, bytes) else str(t)
    raw = group.attrs.get("ep_meta")
    if raw is None:
        return None
    try:
        meta = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (ValueError, TypeError):
        return None
    if not isinstance(meta, dict):
        return None
    for k in ("lang", "task"):
        if isinstance(meta.get(k), str) and meta[k]:
            return meta[k]
    return None


def load_episode_store(
    path: str,
    obs_keys: list[str],
    action_keys: list[str] = ("actions",),
    filter_key: str | None = None,
    load_next_obs: bool = True,
    load_rewards: bool | None = None,
    memmap_dir: str | None = None,
    demo_limit: int | None = None,
) -> EpisodeStore:
    """Load ``obs_keys`` (+ next obs), the concatenated ``action_keys``, rewards and dones of one split.

    ``load_rewards``: True requires rewards/dones, None loads them when every demo has them, False skips them.
    Raises :class:`DatasetError` naming the file, demo and key for anything missing, mis-shaped or non-finite.
    """
    if os.path.isfile(os.path.join(path, "meta", "info.json")):  # a LeRobotDataset folder: same store, own reader
        from modmimic.data.lerobot import load_lerobot_store

        return load_lerobot_store(path, obs_keys, action_keys, filter_key, load_next_obs, load_rewards, memmap_dir,
                                  demo_limit)
    obs_keys = list(obs_keys)
    action_keys = list(action_keys)
    if not action_keys:
        raise DatasetError("train.action_keys is empty")
    with open_hdf5(path) as f:
        demos = list_demos(f, filter_key, path)
        if demo_limit is not None:
            demos = demos[:demo_limit]
        if not demos:
            others = C.skipped_groups(f["data"])
            raise DatasetError(f"{path}: no demos" + (f" in mask/{filter_key}" if filter_key else "") +
                               (f"; data/ holds {', '.join(sorted(others)[:5])}, not named demo_<N>" if others else ""))
        data = f["data"]
        errors, _ = C.check_demos(f, demos, path, keys=[])  # num_samples of every demo
        if errors:
            raise DatasetError(_summary(errors))
        lengths = [int(np.asarray(data[d].attrs["num_samples"]).reshape(())) for d in demos]
        first = data[demos[0]]

        # --- column layout from the first demo -----------------------------------------------------------
        float_entries = []  # (batch key, hdf5 relative path, shape)
        uint8_entries = []
        groups = [("obs", K.obs)] + ([("next_obs", K.next_obs)] if load_next_obs else [])
        for grp, keyfn in groups:
            for k in obs_keys:
                ds = _dataset_in_demo(first, f"{grp}/{k}")
                if ds is None:
                    have = sorted(first[grp].keys()) if grp in first else []
                    raise DatasetError(
                        f"{path}: observation key {k!r} not found in data/{demos[0]}/{grp} (available: {have})")
                entry = (keyfn(k), f"{grp}/{k}", tuple(ds.shape[1:]))
                (uint8_entries if ds.dtype == np.uint8 else float_entries).append(entry)
        act_dims = []
        for a in action_keys:
            ds = _dataset_in_demo(first, a)
            if ds is None:
                raise DatasetError(f"{path}: action key {a!r} not found in data/{demos[0]}")
            act_dims.append(int(np.prod(ds.shape[1:])) if len(ds.shape) > 1 else 1)
        if load_rewards is None:
            load_rewards = all("rewards" in data[d] and "dones" in data[d] for d in demos)
        elif load_rewards:
            for d in demos:
                for name in ("rewards", "dones"):
                    if name not in data[d]:
                        raise DatasetError(f"{path}: data/{d} has no {name!r}, which this recipe needs")

        # every dataset this load reads: present, numeric, one row per step, in every demo (before allocating)
        rels = [rel for _, rel, _ in float_entries + uint8_entries] + list(action_keys)
        errors, _ = C.check_demos(f, demos, path, keys=rels + (["rewards", "dones"] if load_rewards else []))
        if errors:
            raise DatasetError(_summary(errors))

        columns, width = {}, 0
        for key, _, shape in float_entries:
            n = int(np.prod(shape))
            columns[key] = (width, width + n, shape)
            width += n
        columns[K.ACTION] = (width, width + sum(act_dims), (sum(act_dims),))
        width += sum(act_dims)
        if load_rewards:
            columns[K.REWARD] = (width, width + 1, (1,))
            columns[K.DONE] = (width + 1, width + 2, (1,))
            width += 2

        n_total = sum(lengths)

        obs_moments = {k: None for k in obs_keys if K.obs(k) in columns and has_obs_stats(columns[K.obs(k)][2])}
        act_moments = {a: None for a in action_keys}
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

        def read(demo_name, rel, length, shape):
            ds = _dataset_in_demo(data[demo_name], rel)
            if ds is None:
                raise DatasetError(f"{path}: data/{demo_name}/{rel} is missing")
            try:
                arr = ds[()]
            except (OSError, KeyError) as e:
                raise DatasetError(f"{path}: cannot read data/{demo_name}/{rel} (corrupt file?): {e}") from None
            if arr.shape[0] != length:
                raise DatasetError(f"{path}: data/{demo_name}/{rel} has {arr.shape[0]} rows but num_samples={length}")
            if shape is not None and tuple(arr.shape[1:]) != tuple(shape):
                raise DatasetError(
                    f"{path}: data/{demo_name}/{rel} has shape {tuple(arr.shape[1:])} per step, expected {shape}")
            return arr

        def hdf5_name(key, col):
            """The dataset inside a demo that column ``col`` of batch key ``key`` comes from."""
            for k, rel, _ in float_entries:
                if k == key:
                    return rel
            if key == K.ACTION:
                a = columns[K.ACTION][0]
                for name, dim in zip(action_keys, act_dims):
                    if col < a + dim:
                        return name
                    a += dim
            return "rewards" if key == K.REWARD else "dones"

        def fill_flat(flat):
            for d, L, o in zip(demos, lengths, offsets):
                rows = slice(int(o), int(o) + L)
                block = np.empty((L, width), dtype=np.float32)
                pending = []  # (moments dict, key, array): merged once the block is known to be finite
                for key, rel, shape in float_entries:
                    arr = read(d, rel, L, shape).reshape(L, -1)
                    a, b, _ = columns[key]
                    block[:, a:b] = arr
                    if key[0] == K.OBS and key[1] in obs_moments:
                        pending.append((obs_moments, key[1], arr))
                a = columns[K.ACTION][0]
                for name, dim in zip(action_keys, act_dims):
                    arr = read(d, name, L, None).reshape(L, -1)
                    if arr.shape[1] != dim:
                        raise DatasetError(
                            f"{path}: data/{d}/{name} has {arr.shape[1]} dims, demo {demos[0]} has {dim}")
                    block[:, a:a + dim] = arr
                    pending.append((act_moments, name, arr))
                    a += dim
                if load_rewards:
                    block[:, columns[K.REWARD][0]] = read(d, "rewards", L, None).reshape(L)
                    block[:, columns[K.DONE][0]] = read(d, "dones", L, None).reshape(L)
                bad = ~np.isfinite(block)
                if bad.any():
                    col = int(np.nonzero(bad.any(axis=0))[0][0])
                    row = int(np.nonzero(bad[:, col])[0][0])
                    key = next(k for k, (s, e, _) in columns.items() if s <= col < e)
                    raise DatasetError(f"{path}: data/{d}/{hdf5_name(key, col)} has NaN or Inf values "
                                       f"(batch key {key}, row {row}); training on them would diverge: fix or drop the demo")
                for moments_of, k, arr in pending:
                    moments_of[k] = S.merge_moments(moments_of[k], S.moments(arr))
                flat[rows] = torch.from_numpy(block)
                _test_slow_memmap(flat)

        def fill_uint8(put):
            """``put(key, rows, array)`` for each image dataset of each demo, in store order."""
            for d, L, o in zip(demos, lengths, offsets):
                for key, rel, shape in uint8_entries:
                    put(key, slice(int(o), int(o) + L), read(d, rel, L, shape))

        uint8_files = {key: f"uint8-{i}.rows" for i, (key, _, _) in enumerate(uint8_entries)}

        def write_uint8_files(folder):
            handles = {key: open(os.path.join(folder, name), "wb") for key, name in uint8_files.items()}
            try:
                fill_uint8(lambda key, rows, arr: write_rows(handles[key], arr))
            finally:
                for h in handles.values():
                    h.close()

        layout = {"format": MEMMAP_FORMAT, "demos": demos, "lengths": lengths, "width": width,
                  "columns": {repr(k): [a, b, list(sh)] for k, (a, b, sh) in columns.items()},
                  "uint8": {repr(k): [rel, list(sh), uint8_files[k]] for k, rel, sh in uint8_entries},
                  "filter_key": filter_key, "action_keys": action_keys}
        check_store_size(path, n_total, width, uint8_entries, float_entries, memmap_dir)
        memmap_path, reused = None, False
        if memmap_dir is None:
            flat = torch.empty((n_total, width), dtype=torch.float32)
            fill_flat(flat)
            uint8 = {key: torch.empty((n_total, *shape), dtype=torch.uint8) for key, _, shape in uint8_entries}
            fill_uint8(lambda key, rows, arr: uint8[key].__setitem__(rows, torch.from_numpy(arr)))
        else:
            flat, memmap_path, reused, moments = memmap_store(path, memmap_dir, layout, (n_total, width), fill_flat,
                                                              lambda: (obs_moments, act_moments), write_uint8_files)
            obs_moments, act_moments = moments
            uint8 = {key: RowFile(os.path.join(memmap_path, uint8_files[key]), (n_total, *shape))
                     for key, _, shape in uint8_entries}
        raw = data.attrs.get("env_args")
        env_meta = {} if raw is None else parse_env_args(raw, path)
        tasks = [hdf5_demo_task(data[d]) for d in demos]
    return EpisodeStore(
        path=path, demos=demos, lengths=torch.tensor(lengths, dtype=torch.int64),
        offsets=torch.from_numpy(offsets), flat=flat, columns=columns, uint8=uint8, obs_keys=obs_keys,
        action_keys=action_keys, env_meta=env_meta, obs_moments=obs_moments, action_moments=act_moments,
        memmap_path=memmap_path, memmap_reused=reused, tasks=tasks if any(tasks) else [])


def _summary(errors: list[str]) -> str:
    more = f" (and {len(errors) - 3} more problems)" if len(errors) > 3 else ""
    return "; ".join(errors[:3]) + more
