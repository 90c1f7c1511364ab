"""The episode store every dataset source fills (robomimic HDF5 in :mod:`modmimic.data.hdf5`, LeRobotDataset folders
in :mod:`modmimic.data.lerobot`): all demos of one split back to back in one ``[N, D]`` float32 buffer (in RAM or a
memory-mapped file keyed by the data's contents) plus uint8 image stores, with the statistics of its columns."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from modmimic import keys as K
from modmimic.data import stats as S

MEMMAP_FORMAT = 2  # bump when the store's file layout changes (2: image row files): older stores are rebuilt


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, or lacks what the configuration asks of it."""


@dataclass
class EpisodeStore:
    """All loaded demos of one split, contiguous.

    ``columns`` maps each batch key (``keys.py``) to ``(start, stop, shape)`` inside ``flat``; ``uint8`` maps image
    keys to their own ``[N, H, W, C]`` uint8 stores (a tensor in RAM, a :class:`RowFile` in a memory-mapped store;
    both gather with ``store[rows]``). ``offsets[e]``/``lengths[e]`` locate demo ``e``'s rows.
    """

    path: str
    demos: list[str]
    lengths: torch.Tensor
    offsets: torch.Tensor
    flat: torch.Tensor
    columns: dict
    uint8: dict
    obs_keys: list[str]
    action_keys: list[str]
    env_meta: dict = field(default_factory=dict)
    obs_moments: dict = field(default_factory=dict)
    action_moments: dict = field(default_factory=dict)
    memmap_path: str | None = None  # the memory-mapped store's directory, when there is one
    memmap_reused: bool = False  # True when an earlier run built it (same file contents, filter key and layout)
    tasks: list = field(default_factory=list)  # one task per demo (LeRobot; HDF5 attr task, ep_meta lang/task)

    @property
    def num_samples(self) -> int:
        return int(self.lengths.sum())

    @property
    def ac_dim(self) -> int:
        start, stop, _ = self.columns[K.ACTION]
        return stop - start

    def obs_shapes(self) -> dict:
        """``{obs key: shape}`` (raw shapes, as stored)."""
        out = {}
        for k in self.obs_keys:
            if K.obs(k) in self.columns:
                out[k] = tuple(self.columns[K.obs(k)][2])
            else:
                out[k] = tuple(self.uint8[K.obs(k)].shape[1:])
        return out

    def has(self, key) -> bool:
        return key in self.columns or key in self.uint8

    def obs_normalization_stats(self) -> dict:
        return {k: S.obs_stats_from_moments(m) for k, m in self.obs_moments.items()}

    def action_normalization_stats(self, action_config: dict | None = None) -> dict:
        action_config = action_config or {}
        out = {}
        for k, m in self.action_moments.items():
            norm = (action_config.get(k) or {}).get("normalization")
            out[k] = S.action_stats_from_moments(m, norm)
        return out


def check_store_size(path: str, n_rows: int, width: int, uint8_entries, float_entries, memmap_dir) -> None:
    """Refuse, before allocating, an episode store larger than the memory (or, memory-mapped, the disk) there is:
    a small file may declare huge per-step shapes (compressed or never written)."""
    need = n_rows * (width * 4 + sum(int(np.prod(sh)) for _, _, sh in uint8_entries))
    if memmap_dir is None:
        from modmimic.memory import available_memory_bytes

        have, where = available_memory_bytes("cpu"), "memory"
    else:
        import shutil

        probe = os.path.abspath(memmap_dir)
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        have, where = shutil.disk_usage(probe).free, f"disk under {memmap_dir}"
    if have is None or need <= have:
        return
    biggest = max(float_entries + uint8_entries, key=lambda e: int(np.prod(e[2])), default=None)
    declared = f"; the largest per-step entry is {biggest[1]} with shape {tuple(biggest[2])}" if biggest else ""
    raise DatasetError(f"{path}: its {n_rows} steps need {need / 2**30:.3g} GiB as an episode store, more than the "
                       f"{have / 2**30:.3g} GiB of free {where}{declared}")


def has_obs_stats(shape) -> bool:
    """Whether a float observation of per-step ``shape`` gets normalization statistics: low-dim vectors do; image-like
    arrays (three or more dimensions per step, e.g. depth ``[H, W, 1]``) do not (robomimic normalizes low_dim only)."""
    return len(tuple(shape)) < 3


def _test_slow_memmap(flat) -> None:
    """``MODMIMIC_TEST_SLOW_MEMMAP=<seconds>``: pause after each demo written to a memory-mapped store (tests kill
    the process in the middle of a build)."""
    delay = float(os.environ.get("MODMIMIC_TEST_SLOW_MEMMAP", "0") or 0)
    if delay > 0 and type(flat) is not torch.Tensor:  # a MemoryMappedTensor
        time.sleep(delay)


def folder_digest(root: str) -> str:
    """BLAKE2b over every file of a dataset folder (relative path and bytes), for the memory-mapped store's key."""
    h = hashlib.blake2b()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            h.update(os.path.relpath(p, root).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(hashlib.file_digest(f, "blake2b").digest())
    return h.hexdigest()


def file_digest(path: str) -> str:
    """BLAKE2b of the file's bytes (about 1 s per GB); of every file's bytes for a dataset folder."""
    if os.path.isdir(path):
        return folder_digest(path)
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def memmap_store(path: str, memmap_dir: str, layout: dict, shape: tuple, fill, moments, fill_files=None):
    """The float buffer of an episode store in a memory-mapped file under ``memmap_dir``, keyed by the dataset's
    contents (its BLAKE2b) and ``layout`` (demos, lengths, columns, filter key, action keys): the directory
    ``store-<key>/`` holds ``flat.memmap`` and ``meta.npz`` (the statistics). A store that exists is reused as is;
    otherwise ``fill(flat)`` writes it in ``.build-<key>-<pid>/``, renamed into place when complete, so a killed
    build never leaves a store that looks finished; ``fill_files(build dir)`` writes any further files of the
    store there (the image row files). An exclusive lock on ``.store-<key>.lock`` makes concurrent jobs
    (a sweep) build it once and share it. Returns ``(flat, store dir, reused, (obs moments, action moments))``."""
    from tensordict import MemoryMappedTensor

    try:
        os.makedirs(memmap_dir, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create the memory-mapped store directory {memmap_dir} "
                           f"(train.hdf5_memmap_dir): {e.strerror or e}") from None
    key = hashlib.blake2b(json.dumps([file_digest(path), layout], sort_keys=True).encode(), digest_size=12).hexdigest()
    final = os.path.join(memmap_dir, f"store-{key}")
    with open(os.path.join(memmap_dir, f".store-{key}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the process ends, killed or not
        try:
            if not os.path.isdir(final):
                for stale in os.listdir(memmap_dir):  # builds of this key that a killed process left behind
                    if stale.startswith(f".build-{key}-"):
                        shutil.rmtree(os.path.join(memmap_dir, stale), ignore_errors=True)
                tmp = os.path.join(memmap_dir, f".build-{key}-{os.getpid()}")
                os.makedirs(tmp)
                flat = MemoryMappedTensor.empty(shape, dtype=torch.float32, filename=os.path.join(tmp, "flat.memmap"))
                fill(flat)
                if fill_files is not None:
                    fill_files(tmp)
                obs_m, act_m = moments()
                _save_moments(os.path.join(tmp, "meta.npz"), obs_m, act_m)
                with open(os.path.join(tmp, "layout.json"), "w") as f:
                    json.dump({"dataset": path, **layout}, f)
                del flat
                os.rename(tmp, final)
                reused = False
            else:
                reused = True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    flat = MemoryMappedTensor.from_filename(os.path.join(final, "flat.memmap"), dtype=torch.float32, shape=shape)
    return flat, final, reused, _load_moments(os.path.join(final, "meta.npz"))


def _save_moments(path: str, obs_m: dict, act_m: dict) -> None:
    arrays = {}
    for group, ms in (("obs", obs_m), ("act", act_m)):
        for k, m in ms.items():
            for field_name, v in m.items():
                arrays[f"{group}|{k}|{field_name}"] = np.asarray(v)
    np.savez(path, **arrays)


def _load_moments(path: str) -> tuple[dict, dict]:
    out = {"obs": {}, "act": {}}
    with np.load(path, allow_pickle=False) as z:
        for name in z.files:
            group, k, field_name = name.split("|")
            v = z[name]
            out[group].setdefault(k, {})[field_name] = int(v) if field_name == "n" else v
    return out["obs"], out["act"]
