"""Dataset tools for robomimic-format HDF5 files.

    python -m modmimic.dataset info <file.hdf5> [--filter-key K] [--strict]
    python -m modmimic.dataset split <file.hdf5> [--valid-fraction 0.1] [--seed 0] [--filter-key K] [--overwrite]
    python -m modmimic.dataset states_to_obs <in.hdf5> <out.hdf5> --camera-names agentview robot0_eye_in_hand
        [--camera-height 84] [--camera-width 84] [--depth] [--workers N] [--exclude-next-obs] [--compress]
        [--overwrite]
    python -m modmimic.dataset extract_action_dict <in.hdf5> <out.hdf5> [--overwrite]
    python -m modmimic.dataset merge <a.hdf5> <b.hdf5> [...] -o <out.hdf5> [--overwrite]
    python -m modmimic.dataset filter <file.hdf5> --name K [--success | --failed] [--min-return R] [--max-return R]
        [--min-length N] [--max-length N] [--demos demo_0,demo_3 | --demos @list.txt] [--from-key K] [--overwrite]
    python -m modmimic.dataset playback <file.hdf5> -o <out.mp4> [--demos demo_0,...] [--filter-key K]
        [--from auto|images|states] [--camera agentview] [--size 256] [--fps 20] [--overwrite]
    python -m modmimic.dataset convert <in> <out> --to lerobot|robomimic [--lossless] [--codec libsvtav1|h264|hevc]
        [--crf N] [--fps 20] [--task TEXT] [--filter-key K] [--env-name NAME] [--workers 2] [--overwrite]

``info`` prints the number of demos and samples, demo length statistics, every per-step dataset of a demo with its
shape, dtype and value range over the (filtered) demos, the filter keys, the environment metadata, and checks that
the actions lie in [-1, 1] (robomimic's requirement unless ``train.action_config`` normalizes them; ``--strict``
makes a violation exit with status 1). It also runs training's structural checks (:mod:`modmimic.data.check`):
a file that training would refuse (a demo without steps, a dataset whose row count differs from ``num_samples``,
non-numeric observations or actions, NaN/Inf in what training reads) is listed and exits with status 2.

``info <LeRobotDataset folder>`` prints the same for a LeRobotDataset (v2.x, v3.0): the keys as training reads
them (``obs/state``, ``obs/<cam>_image`` ...) with their LeRobot features, the splits as filter keys, the task
strings; missing data or video files and row counts that disagree with ``meta/info.json`` exit with status 2.

``merge`` writes several robomimic files as one (demos renumbered in input order, filter keys, ``env_args`` and
attributes kept); inputs that disagree (``env_args``, an attribute, the per-step datasets) are an error naming the
file and key, and nothing is written. ``filter`` writes ``mask/<name>``: the demos (of ``--from-key``) that meet
every criterion given (success: a demo's ``success`` attribute, else a reward of 1 at some step; return: the sum of
its rewards; length: its steps; an explicit demo list). Nothing else in the file changes.

``playback`` writes demos as one MP4 (robomimic's ``playback_dataset.py``): their stored ``<camera>_image`` frames,
or (``--from states``, or when there are no images) each stored simulator state restored in the environment
``env_args`` rebuild and rendered.

``states_to_obs`` re-renders observations (camera images, depth) from the stored simulator states
(:mod:`modmimic.states_to_obs`, robomimic's ``dataset_states_to_obs``).

``extract_action_dict`` writes a copy of a dataset with robomimic 0.5's action dictionary added to every demo
(robomimic's ``scripts/extract_action_dict.py``, which edits the file in place; modmimic never does): from the 7-D
OSC ``actions`` (Δpos, Δaxis-angle, gripper) ``action_dict/{rel_pos, rel_rot_axis_angle, rel_rot_6d, gripper}``
(8-D actions: also ``base_mode``), and from ``actions_abs`` when the demos have it ``action_dict/{abs_pos,
abs_rot_axis_angle, abs_rot_6d}``. Values keep the input's float type; ``rot_6d`` is the rotation matrix's first two
rows (:mod:`modmimic.rotations`). An existing output is replaced only with ``--overwrite``.

``convert`` (:mod:`modmimic.data.convert`, formats in docs/data_formats.md): a robomimic HDF5 to a LeRobotDataset
v3.0 folder (``--to lerobot``; images as AV1 video, or PNG with ``--lossless``), and a LeRobotDataset folder (v2.x or
v3.0), a Minari dataset folder or a D4RL-style HDF5 (``observations``, ``actions``, ``rewards``, ``terminals``,
``timeouts``) to robomimic HDF5 (``--to robomimic``). The output is written beside its final path and renamed into
place; an existing output is replaced only with ``--overwrite``.

``split`` writes ``mask/train`` and ``mask/valid`` (``mask/<K>_train``, ``mask/<K>_valid`` when splitting the demos
of filter key ``K``), chosen by a seeded shuffle, so the same seed always gives the same split. Nothing else in
the file is touched; existing masks of those names are replaced only with ``--overwrite`` (without it the command
says what it would change, exits 2 and leaves the file as it was).

:func:`dataset_entries` and :func:`with_data` tell which files a training config reads (``train.data``: a path,
a list of paths or robomimic's list of ``{path, weight, filter_key, ...}`` dicts; or the embedded default dataset). This module does not import torch, so the command line rejects bad input quickly.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import copy

import h5py
import numpy as np
from omegaconf import DictConfig, open_dict

from modmimic.config import ConfigError, to_plain
from modmimic.data import check as C
from modmimic.data.default import OBS_KEYS as DEFAULT_OBS_KEYS, default_dataset_path

PROG = "modmimic.dataset"


class ToolError(Exception):
    """Bad input to a dataset tool."""


class DatasetNotFound(ConfigError):
    """``train.data`` names a file that does not exist."""


def _open(path: str, mode: str = "r") -> h5py.File:
    problem = C.path_problem(path)
    if problem:
        raise ToolError(problem)
    try:
        return h5py.File(path, mode)
    except OSError as e:
        raise ToolError(f"cannot open {path} as HDF5 (corrupt, not HDF5, or opened for writing elsewhere): {e}")


def demo_names(f: h5py.File, filter_key: str | None = None, path: str = "") -> list[str]:
    """:func:`modmimic.data.hdf5.list_demos` (one rule for which groups are demos), its errors as ToolErrors; the
    warning for skipped groups is the caller's to give."""
    import warnings as _warnings

    from modmimic.data.hdf5 import DatasetError, list_demos

    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            return list_demos(f, filter_key, path)
    except DatasetError as e:
        raise ToolError(str(e)) from None


# --- which file a config trains on ----------------------------------------------------------------------------

ROBOMIMIC_DEFAULT_LOW_DIM = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]


DATA_ENTRY_KEYS = ("path", "weight", "filter_key", "validation_filter_key", "demo_limit", "name", "key", "eval",
                   "lang", "task")


def dataset_entries(cfg: DictConfig) -> list[dict]:
    """``train.data`` as a list of ``{"path", "weight", "filter_key", "validation_filter_key", "demo_limit", "name",
    ...}``: one path, a list of paths, or robomimic's list of dataset dicts (``path`` required, ``weight`` 1.0 by
    default). ``[{"path": None}]`` means the embedded default dataset. Bad entries are a :class:`ConfigError`
    naming the entry and key."""
    data = to_plain(cfg.train.data)
    if data is None:
        return [{"path": None, "weight": 1.0}]
    if isinstance(data, str):
        return [{"path": data, "weight": 1.0}]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"train.data must be a path, a list of paths or a list of {{path: ..., weight: ...}} "
                          f"dicts, got {data!r}")
    out = []
    for i, d in enumerate(data):
        where = f"train.data[{i}]"
        if isinstance(d, str):
            d = {"path": d}
        if not isinstance(d, dict) or not isinstance(d.get("path"), str) or not d["path"]:
            raise ConfigError(f"{where} must be a path or a dict with a 'path' (str), got {d!r}")
        unknown = [k for k in d if k not in DATA_ENTRY_KEYS]
        if unknown:
            raise ConfigError(f"{where} has unknown keys {unknown}; a dataset entry has {', '.join(DATA_ENTRY_KEYS)}")
        w = d.get("weight", 1.0)
        if w is None:
            w = 1.0
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not np.isfinite(w) or w <= 0:
            raise ConfigError(f"{where}.weight must be a positive number (robomimic's default 1.0), got {w!r}")
        for k in ("filter_key", "validation_filter_key", "name", "key", "lang", "task"):
            if d.get(k) is not None and not isinstance(d[k], str):
                raise ConfigError(f"{where}.{k} must be a str or null, got {d[k]!r}")
        n = d.get("demo_limit")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"{where}.demo_limit must be a positive int or null, got {n!r}")
        out.append({**d, "weight": float(w)})
    return out


def dataset_entry(cfg: DictConfig) -> dict:
    """The first entry of :func:`dataset_entries` (``{"path": None}``: the embedded default dataset)."""
    return dataset_entries(cfg)[0]


def with_data(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose ``train.data`` paths are absolute (a list keeps its form, each entry's path made
    absolute). Without a dataset, the embedded default (:mod:`modmimic.data.default`) is used and, if the
    observation keys are still robomimic's Lift defaults, they become the default dataset's keys."""
    cfg = copy.deepcopy(cfg)
    entries = dataset_entries(cfg)
    with open_dict(cfg):
        if entries[0]["path"] is None:
            cfg.train.data = default_dataset_path()
            if list(cfg.observation.modalities.obs.low_dim) == ROBOMIMIC_DEFAULT_LOW_DIM:
                cfg.observation.modalities.obs.low_dim = list(DEFAULT_OBS_KEYS)
        elif isinstance(to_plain(cfg.train.data), list):
            cfg.train.data = [{**(e if isinstance(e, dict) else {}), "path": _abs(entry["path"])}
                              for e, entry in zip(to_plain(cfg.train.data), entries)]
        else:
            cfg.train.data = _abs(entries[0]["path"])
    return cfg


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


# --- info -------------------------------------------------------------------------------------------------------

def dataset_info(path: str, filter_key: str | None = None) -> dict:
    """Everything ``info`` prints, as a dict."""
    with _open(path) as f:
        demos = demo_names(f, filter_key, path)
        if not demos:
            raise ToolError(f"{path}: no demos" + (f" in mask/{filter_key}" if filter_key else ""))
        data = f["data"]
        errors, warnings = C.check_demos(f, demos, path)  # what training would refuse, and what it ignores
        skipped = C.skipped_warning(path, C.skipped_groups(data))
        warnings += [skipped] if skipped else []
        lengths = np.array([_num_samples(data[d]) for d in demos])
        keys = {}
        for d in demos:  # every per-step dataset of any demo; shape and dtype as in the first demo that has it
            for name, ds in C.walk_datasets(data[d]) if isinstance(data[d], h5py.Group) else ():
                if name == "model_file" or name in keys:  # model_file: the compressed MJCF XML, not per step
                    continue
                keys[name] = {"shape": list(ds.shape[1:]), "dtype": str(ds.dtype), "min": None, "max": None}
        for d in demos:
            if not isinstance(data[d], h5py.Group):
                continue  # check_demos reported it
            for name, entry in keys.items():
                if name not in data[d]:
                    entry["missing_in"] = entry.get("missing_in", 0) + 1
                    if name.startswith("obs/") or name == "actions":  # every recipe reads these
                        errors.append(f"{path}: data/{d}/{name} is missing (other demos have it)")
                    elif C.is_training_dataset(name):
                        warnings.append(f"{path}: data/{d}/{name} is missing (other demos have it); recipes that "
                                        "read it refuse this file")
                    continue
                if isinstance(data[d][name], h5py.Dataset) and list(data[d][name].shape[1:]) != entry["shape"] \
                        and C.is_training_dataset(name):
                    errors.append(f"{path}: data/{d}/{name} has shape {tuple(data[d][name].shape[1:])} per step, "
                                  f"other demos have {tuple(entry['shape'])}")
                if entry["dtype"] == "uint8" and len(entry["shape"]) >= 2:
                    continue  # images: shape and dtype only (ranges would read every frame)
                ds = data[d][name]
                if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiub" or ds.size == 0:
                    continue
                arr = ds[()]
                finite = arr[np.isfinite(arr)] if ds.dtype.kind == "f" else arr
                if finite.size:
                    lo, hi = float(np.min(finite)), float(np.max(finite))
                    entry["min"] = lo if entry["min"] is None else min(entry["min"], lo)
                    entry["max"] = hi if entry["max"] is None else max(entry["max"], hi)
                if finite.size != arr.size:
                    entry["non_finite_in"] = entry.get("non_finite_in", 0) + 1
                    (errors if C.is_training_dataset(name) else warnings).append(
                        f"{path}: data/{d}/{name} has NaN or Inf values")
        masks = {}
        if "mask" in f:
            for k in f["mask"]:
                masks[k] = int(f["mask"][k].shape[0])
        raw = data.attrs.get("env_args")
        try:
            env = json.loads(raw) if raw is not None else None
            if env is not None and not isinstance(env, dict):
                raise TypeError(f"{type(env).__name__} JSON, expected an object")
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            env = {"unparsable": str(raw)[:200]}
            errors.append(f"{path}: data.attrs['env_args'] is not valid JSON ({type(e).__name__}: {e})")
        total_attr = data.attrs.get("total")
        mix = _mix_attr(data.attrs.get("mix"))
    act = keys.get("actions")
    action_ok = None if act is None or act["min"] is None else (act["min"] >= -1.0 and act["max"] <= 1.0)
    return {"path": path, "filter_key": filter_key, "num_demos": len(demos), "num_samples": int(lengths.sum()),
            "total_attr": _as_int(total_attr),
            "length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
            "keys": keys, "filter_keys": masks, "env_meta": env, "actions_in_unit_range": action_ok,
            "mix": mix, "errors": errors, "warnings": warnings}


def _mix_attr(raw):
    """``data.attrs["mix"]`` of a mixed-quality dataset (``modmimic.demos generate quality=mixed``): ``{kind:
    {"fraction", "demos", "successes"}}``, or None when absent or not such a JSON object."""
    if raw is None:
        return None
    try:
        mix = json.loads(raw)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
        return None
    ok = isinstance(mix, dict) and all(isinstance(m, dict) for m in mix.values())
    return mix if ok else None


def _as_int(v):
    try:
        return None if v is None else int(np.asarray(v).reshape(()))
    except (TypeError, ValueError):
        return None


def _num_samples(demo) -> int:
    try:
        return int(np.asarray(demo.attrs.get("num_samples", 0)).reshape(()))
    except (TypeError, ValueError):
        return 0


def _fmt(v):
    return "-" if v is None else f"{v:.4g}"


def print_info(info: dict, out=None) -> None:
    p = lambda *a: print(*a, file=out or sys.stdout)  # noqa: E731
    p(f"file:         {info['path']}" + (f"  (filter key {info['filter_key']})" if info["filter_key"] else ""))
    if info.get("format"):
        p(f"format:       {info['format']}, {info['fps']} fps; keys as modmimic reads them (feature in brackets)")
    p(f"demos:        {info['num_demos']}")
    p(f"samples:      {info['num_samples']}" + ("" if info["total_attr"] in (None, info["num_samples"]) or
                                                  info["filter_key"] else f"  (data.attrs['total'] says "
                                                                              f"{info['total_attr']})"))
    L = info["length"]
    p(f"demo length:  min {L['min']}  mean {L['mean']:.1f}  max {L['max']}")
    env = info["env_meta"]
    if env is None:
        p("env:          " + ("(none in meta/info.json: training runs without rollouts unless experiment.env names "
                              "one)" if info.get("format") else "(no data.attrs['env_args'])"))
    else:
        kinds = {1: "robosuite", 2: "gym", 3: "ig_momart"}
        p(f"env:          {env.get('env_name')}  type {env.get('type')} ({kinds.get(env.get('type'), '?')})  "
          f"version {env.get('env_version')}")
        p(f"env kwargs:   {json.dumps(env.get('env_kwargs', {}), sort_keys=True)[:400]}")
    p("filter keys:  " + (", ".join(f"{k} ({n} demos)" for k, n in sorted(info["filter_keys"].items())) or "(none)"))
    if info.get("tasks"):
        p(f"tasks:        {len(info['tasks'])}: " + "; ".join(info["tasks"][:5]) + (" ..." if len(info["tasks"]) > 5
                                                                                    else ""))
    if info.get("mix"):
        p("mix:          " + ", ".join(f"{k} {m.get('fraction')} ({m.get('demos')} demos, {m.get('successes')} "
                                       f"successful)" for k, m in info["mix"].items()))
    p("per-step datasets (shape per step, dtype, range over the demos):")
    width = max(len(k) for k in info["keys"])
    for k, e in info["keys"].items():
        extra = ""
        if e.get("missing_in"):
            extra += f"  MISSING in {e['missing_in']} demos"
        if e.get("non_finite_in"):
            extra += f"  NaN/Inf in {e['non_finite_in']} demos"
        if e.get("feature"):
            extra += f"  [{e['feature']}" + (f", {e['storage']}" if e.get("storage") else "") + "]"
        p(f"  {k.ljust(width)}  {str(tuple(e['shape'])):<14} {e['dtype']:<8} [{_fmt(e['min'])}, {_fmt(e['max'])}]{extra}")
    for w in info.get("warnings", []):
        p(f"WARNING: {w}")
    for e in info.get("errors", []):
        p(f"ERROR: {e}")
    if info.get("errors"):
        p(f"=> training would refuse this file ({len(info['errors'])} problems)")
    ok = info["actions_in_unit_range"]
    if ok is None:
        p("action range: no 'actions' dataset")
    elif ok:
        p("action range: OK, every action is in [-1, 1]")
    else:
        a = info["keys"]["actions"]
        p(f"action range: WARNING: actions span [{_fmt(a['min'])}, {_fmt(a['max'])}], outside [-1, 1]; policies with "
          "tanh outputs cannot reach them: set train.action_config.actions.normalization=min_max (or gaussian)")


# --- split ------------------------------------------------------------------------------------------------------

def split_demos(demos: list[str], valid_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train, valid)`` demo names: a seeded permutation, the first ``round(fraction * n)`` (at least 1 when the
    fraction is positive, leaving at least 1 for training) are validation; both lists in robomimic's order."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ToolError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    n = len(demos)
    n_valid = int(round(valid_fraction * n))
    if valid_fraction > 0:
        n_valid = max(1, n_valid)
    if n - n_valid < 1:
        raise ToolError(f"cannot split {n} demo(s) with --valid-fraction {valid_fraction}: no training demo would be "
                        "left")
    perm = np.random.default_rng(seed).permutation(n)
    valid = set(perm[:n_valid].tolist())
    train = [d for i, d in enumerate(demos) if i not in valid]
    return train, [d for i, d in enumerate(demos) if i in valid]


def write_split(path: str, valid_fraction: float = 0.1, seed: int = 0, filter_key: str | None = None,
                overwrite: bool = False) -> dict:
    """Write the train/valid filter keys (replace existing ones only with ``overwrite``); returns
    ``{mask name: demo names}``."""
    with _open(path, "r") as f:  # decide before opening for writing: a refusal leaves the file untouched
        demos = demo_names(f, filter_key, path)
        if not demos:
            raise ToolError(f"{path}: no demos to split")
        train, valid = split_demos(demos, valid_fraction, seed)
        prefix = f"{filter_key}_" if filter_key else ""
        out = {f"{prefix}train": train, f"{prefix}valid": valid}
        existing = {n: int(f["mask"][n].shape[0]) for n in out if "mask" in f and n in f["mask"]}
    if existing and not overwrite:
        change = "; ".join(f"mask/{n} ({existing[n]} demos -> {len(out[n])})" if n in existing
                           else f"mask/{n} (new, {len(out[n])} demos)" for n in out)
        raise ToolError(f"{path} already has {', '.join(f'mask/{n}' for n in existing)}; this split (seed {seed}, "
                        f"--valid-fraction {valid_fraction}) would replace {change}. Pass --overwrite to replace "
                        "them; nothing was changed")
    with _open(path, "r+") as f:
        mask = f.require_group("mask")
        for name, names in out.items():
            if name in mask:
                del mask[name]
            mask.create_dataset(name, data=np.array(names, dtype="S"))
    return out


# --- extract_action_dict ----------------------------------------------------------------------------------------

OSC_ACTION_DIMS = (7, 8)  # Δpos (3), Δaxis-angle (3), gripper (1) [, base mode (1)]


def action_dict_of(actions: np.ndarray, prefix: str, with_gripper: bool = True) -> dict:
    """robomimic's action dictionary entries of ``[T, 7 | 8]`` OSC actions: ``<prefix>pos``,
    ``<prefix>rot_axis_angle``, ``<prefix>rot_6d`` (and ``gripper``, ``base_mode`` for 8-D, when ``with_gripper``)."""
    from modmimic.rotations import axis_angle_to_rot_6d

    a = np.asarray(actions)
    a = a if a.dtype.kind == "f" else a.astype(np.float32)
    out = {f"{prefix}pos": a[:, :3], f"{prefix}rot_axis_angle": a[:, 3:6],
           f"{prefix}rot_6d": axis_angle_to_rot_6d(a[:, 3:6]).astype(a.dtype)}
    if with_gripper:
        out["gripper"] = a[:, 6:7]
        if a.shape[1] == 8:
            out["base_mode"] = a[:, 7:8]
    return out


def _osc_actions(group, name: str, demo: str, path: str, length: int | None = None) -> np.ndarray:
    ds = group.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise ToolError(f"{path}: data/{demo}/{name} is missing")
    if ds.ndim != 2 or ds.shape[1] not in OSC_ACTION_DIMS or ds.dtype.kind not in "fiu":
        raise ToolError(f"{path}: data/{demo}/{name} is {ds.dtype} of shape {ds.shape}; extract_action_dict reads "
                        "numeric OSC actions of 7 dims per step (Δpos 3, Δaxis-angle 3, gripper 1; 8 with a base "
                        "mode)")
    if length is not None and ds.shape[0] != length:
        raise ToolError(f"{path}: data/{demo}/{name} has {ds.shape[0]} steps, data/{demo}/actions {length}")
    a = ds[()]
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ToolError(f"{path}: data/{demo}/{name} has NaN or Inf values")
    return a


def extract_action_dict(in_path: str, out_path: str, overwrite: bool = False) -> dict:
    """Write ``out_path``: a copy of ``in_path`` with ``action_dict/*`` added to every demo (module docstring).
    Everything is checked before anything is written; the copy is written to ``<out>.partial`` and moved into place.
    Returns ``{"demos", "keys", "path"}``."""
    if os.path.abspath(in_path) == os.path.abspath(out_path) or (
            os.path.exists(out_path) and os.path.exists(in_path) and os.path.samefile(in_path, out_path)):
        raise ToolError(f"the output {out_path} is the input file; modmimic writes a copy: name another file")
    if os.path.exists(out_path) and not overwrite:
        raise ToolError(f"{out_path} exists; pass --overwrite to replace it (nothing was written)")
    with _open(in_path) as f:
        demos = demo_names(f, None, in_path)
        if not demos:
            raise ToolError(f"{in_path}: no demos")
        data = f["data"]
        have_abs = [d for d in demos if isinstance(data[d], h5py.Group) and "actions_abs" in data[d]]
        if have_abs and len(have_abs) != len(demos):
            lacking = [d for d in demos if d not in have_abs]
            raise ToolError(f"{in_path}: {len(have_abs)} demos have actions_abs, {len(lacking)} do not (data/"
                            f"{lacking[0]}/actions_abs is missing): every demo or none")
        dicts = {}
        for d in demos:
            if not isinstance(data[d], h5py.Group):
                raise ToolError(f"{in_path}: data/{d} is not a group")
            a = _osc_actions(data[d], "actions", d, in_path)
            entry = action_dict_of(a, "rel_")
            if have_abs:
                entry.update(action_dict_of(_osc_actions(data[d], "actions_abs", d, in_path, len(a)), "abs_",
                                            with_gripper=False))
            dicts[d] = entry
    from modmimic.io import written_in_place

    with written_in_place(out_path) as tmp:
        shutil.copyfile(in_path, tmp)
        with h5py.File(tmp, "r+") as f:
            for d, entry in dicts.items():
                group = f["data"][d].require_group("action_dict")
                for k, v in entry.items():
                    if k in group:
                        del group[k]
                    group.create_dataset(k, data=v)
    return {"demos": len(demos), "keys": [f"action_dict/{k}" for k in dicts[demos[0]]],
            "path": os.path.abspath(out_path)}


# --- merge ------------------------------------------------------------------------------------------------------

MERGE_ATTRS_SKIP = ("total", "env_args")  # data.attrs recomputed (total) or compared as JSON (env_args)


def _attr_equal(a, b) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return a == b


def _env_args(f: h5py.File, path: str):
    from modmimic.stored import loads_json

    raw = f["data"].attrs.get("env_args")
    if raw is None:
        return None
    try:
        return loads_json(raw, f"{path}: data.attrs['env_args']")
    except ConfigError as e:
        raise ToolError(str(e)) from None


def _step_layout(group: h5py.Group) -> dict:
    """``{per-step dataset: shape per step}`` of one demo's training datasets (obs, next_obs, actions, ...)."""
    return {name: tuple(ds.shape[1:]) for name, ds in C.walk_datasets(group) if C.is_training_dataset(name)}


def merge_datasets(paths: list[str], out: str, overwrite: bool = False) -> dict:
    """Several robomimic HDF5 files into one: demos renumbered ``demo_0..`` in input order (each copied whole:
    datasets, compression, attributes), every filter key kept (``mask/<k>`` lists the renamed demos of every input
    that has ``k``), ``env_args`` and the other ``data``/file attributes kept. Inputs that disagree (different
    ``env_args``, an attribute with different values, demos with different per-step datasets or shapes) are an
    error naming the file and the key, and nothing is written. The output appears complete or not at all."""
    from modmimic.data.convert import check_output, put_in_place

    if len(paths) < 2:
        raise ToolError("merge needs at least two input files")
    if any(os.path.abspath(p) == os.path.abspath(out) for p in paths):
        raise ToolError(f"{out} is also an input; merge writes a new file")
    try:
        check_output(out, overwrite)
    except Exception as e:  # noqa: BLE001 - DatasetError
        raise ToolError(str(e)) from None
    files = [_open(p) for p in paths]
    tmp = out + f".partial-{os.getpid()}"
    try:
        env, attrs, root_attrs, layout, masks, mapping = None, {}, {}, None, {}, []
        for path, f in zip(paths, files):
            demos = demo_names(f, None, path)
            if not demos:
                raise ToolError(f"{path}: no demos")
            e = _env_args(f, path)
            if path == paths[0]:
                env = e
            elif e != env:
                raise ToolError(f"conflict: data.attrs['env_args'] of {path} ({(e or {}).get('env_name')!r}) differs "
                                f"from {paths[0]}'s ({(env or {}).get('env_name')!r}); merge only files of one "
                                "environment")
            for where, target, node in (("data.attrs", attrs, f["data"].attrs), ("file attribute", root_attrs, f.attrs)):
                for k, v in node.items():
                    if where == "data.attrs" and k in MERGE_ATTRS_SKIP:
                        continue
                    if k in target and not _attr_equal(target[k][0], v):
                        raise ToolError(f"conflict: {where} {k!r} is {v!r} in {path} but {target[k][0]!r} in "
                                        f"{target[k][1]}")
                    target.setdefault(k, (v, path))
            here = _step_layout(f["data"][demos[0]])
            if layout is None:
                layout = (here, path)
            elif here != layout[0]:
                diff = sorted(set(here.items()) ^ set(layout[0].items()))
                raise ToolError(f"conflict: {path}'s demos hold {diff[0][0]} with shape {here.get(diff[0][0])} per "
                                f"step, {layout[1]}'s {layout[0].get(diff[0][0])}; merged demos must have the same "
                                "datasets")
            mapping.append((path, f, demos))
        with h5py.File(tmp, "w") as g:
            data, n, total = g.create_group("data"), 0, 0
            for path, f, demos in mapping:
                renamed = {}
                for d in demos:
                    new = f"demo_{n}"
                    f.copy(f["data"][d], data, name=new)
                    renamed[d] = new
                    total += _num_samples(f["data"][d])
                    n += 1
                for k in (f["mask"] if "mask" in f else ()):
                    names = [x.decode() if isinstance(x, bytes) else str(x) for x in f["mask"][k][()]]
                    unknown = [x for x in names if x not in renamed]
                    if unknown:
                        raise ToolError(f"{path}: mask/{k} names {unknown[0]!r}, which is not a demo")
                    masks.setdefault(k, []).extend(renamed[x] for x in names)
            data.attrs["total"] = total
            if env is not None:
                data.attrs["env_args"] = json.dumps(env)
            for k, (v, _) in attrs.items():
                data.attrs[k] = v
            for k, (v, _) in root_attrs.items():
                g.attrs[k] = v
            for k, names in masks.items():
                g.create_dataset(f"mask/{k}", data=np.array(names, dtype="S"))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        for f in files:
            f.close()
    put_in_place(tmp, out)
    return {"path": os.path.abspath(out), "demos": n, "samples": total, "filter_keys": {k: len(v) for k, v in
                                                                                     masks.items()},
            "from": [(p, len(d)) for p, _, d in mapping]}


# --- filter ------------------------------------------------------------------------------------------------------

def demo_success(group: h5py.Group) -> bool:
    """A demo's success: its ``success`` attribute when it has one (``modmimic.demos record`` writes it), else
    robosuite's sparse reward convention (a reward of 1 is the task done)."""
    if "success" in group.attrs:
        return bool(group.attrs["success"])
    if "rewards" not in group:
        raise ToolError(f"data/{group.name.rsplit('/', 1)[-1]} has neither a 'success' attribute nor rewards, so its "
                        "success is unknown")
    return bool(np.max(group["rewards"][()], initial=0.0) >= 1.0)


def demo_return(group: h5py.Group) -> float:
    if "rewards" not in group:
        raise ToolError(f"data/{group.name.rsplit('/', 1)[-1]} has no rewards, so its return is unknown")
    return float(np.sum(group["rewards"][()], dtype=np.float64))


def select_demos(path: str, success: bool | None = None, min_return: float | None = None,
                 max_return: float | None = None, min_length: int | None = None, max_length: int | None = None,
                 demos: list[str] | None = None, from_key: str | None = None) -> list[str]:
    """The demos of ``path`` (of filter key ``from_key`` when given) meeting every given criterion, in file order."""
    with _open(path) as f:
        names = demo_names(f, from_key, path)
        if demos is not None:
            unknown = [d for d in demos if d not in f["data"]]
            if unknown:
                raise ToolError(f"{path}: no demo {unknown[0]!r} (demos are named like {names[0] if names else 'demo_0'})")
            wanted = set(demos)
            names = [d for d in names if d in wanted]
        out = []
        for d in names:
            g = f["data"][d]
            if success is not None and demo_success(g) != success:
                continue
            if (min_return is not None or max_return is not None):
                r = demo_return(g)
                if (min_return is not None and r < min_return) or (max_return is not None and r > max_return):
                    continue
            T = _num_samples(g)
            if (min_length is not None and T < min_length) or (max_length is not None and T > max_length):
                continue
            out.append(d)
    return out


def write_filter_key(path: str, name: str, demos: list[str], overwrite: bool = False) -> list[str]:
    """``mask/<name>`` = ``demos`` (nothing else in the file changes; an existing key needs ``overwrite``)."""
    if not name or "/" in name or name.strip() != name:
        raise ToolError(f"filter key name {name!r} must be a plain name (no '/', no surrounding spaces)")
    if not demos:
        raise ToolError(f"no demo of {path} meets the criteria; mask/{name} was not written")
    with _open(path, "r+") as f:
        if "mask" in f and name in f["mask"]:
            if not overwrite:
                raise ToolError(f"{path}: mask/{name} exists ({f['mask'][name].shape[0]} demos); pass --overwrite "
                                "to replace it")
            del f["mask"][name]
        f.create_dataset(f"mask/{name}", data=np.array(demos, dtype="S"))
    return demos


# --- playback ---------------------------------------------------------------------------------------------------

def playback(path: str, out: str, demos: list[str] | None = None, filter_key: str | None = None,
             source: str = "auto", camera: str | None = None, size: int = 256, fps: int = 20,
             overwrite: bool = False) -> dict:
    """Demos as one MP4 (robomimic's ``playback_dataset.py``): from their stored images (``obs/<camera>_image``) or
    from their simulator ``states`` (each state restored with ``reset_to`` in the environment ``env_args`` rebuild,
    then rendered from ``camera`` at ``size`` x ``size``). ``source="auto"``: images when the demos have them, else
    states. The video appears complete or not at all; an existing ``out`` is replaced only with ``overwrite``."""
    from modmimic.envs.video import VideoWriter

    if source not in ("auto", "images", "states"):
        raise ToolError(f"--from must be images or states, got {source!r}")
    if os.path.lexists(out) and not overwrite:
        raise ToolError(f"{out} exists; pass --overwrite to replace it")
    if size < 16 or fps < 1:
        raise ToolError(f"--size must be >= 16 and --fps >= 1, got {size} and {fps}")
    with _open(path) as f:
        names = demo_names(f, filter_key, path)
        if demos:
            unknown = [d for d in demos if d not in f["data"]]
            if unknown:
                raise ToolError(f"{path}: no demo {unknown[0]!r}")
            names = list(demos)
        first = f["data"][names[0]]
        images = sorted(k for k in (first["obs"] if "obs" in first else ()) if k.endswith("_image"))
        if source == "auto":
            source = ("images" if images and (camera is None or f"{camera}_image" in images or "states" not in first)
                      else "states")
        env = None
        if source == "images":
            key = f"{camera}_image" if camera else (images[0] if images else None)
            if key is None or key not in images:
                raise ToolError(f"{path}: no stored images" + (f" of camera {camera!r}" if camera else "")
                                + (f" (it has {', '.join(images)})" if images else "") + "; use --from states")
        else:
            missing = [d for d in names if "states" not in f["data"][d]]
            if missing:
                raise ToolError(f"{path}: data/{missing[0]}/states is missing; play back from images (--from images)")
            env = _playback_env(f, path)
        tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.partial-{os.getpid()}.mp4")
        frames = 0
        try:
            with VideoWriter(tmp, fps=fps) as video:
                for d in names:
                    g = f["data"][d]
                    if env is None:
                        for img in g[f"obs/{key}"]:
                            video.append(img[..., :3] if img.shape[-1] >= 3 else np.repeat(img, 3, axis=-1))
                            frames += 1
                        continue
                    from modmimic.data.hdf5 import read_model_file

                    states = g["states"][()]
                    env.reset_to({"model": read_model_file(g), "states": states[0]})
                    for st in states:
                        env.reset_to({"states": st})
                        video.append(env.render(height=size, width=size, camera_name=camera or _default_camera(env)))
                        frames += 1
            os.replace(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            if env is not None:
                env.close()
    return {"path": os.path.abspath(out), "demos": len(names), "frames": frames, "source": source}


def _playback_env(f: h5py.File, path: str):
    from modmimic.envs import EnvError, env_from_metadata

    env_meta = _env_args(f, path)
    if not env_meta:
        raise ToolError(f"{path}: no data.attrs['env_args'], so there is no simulator to play the states in")
    try:
        return env_from_metadata(env_meta, render=True)
    except EnvError as e:
        raise ToolError(f"{path}: cannot rebuild its environment to play back states ({e})") from None


def _default_camera(env):
    return "agentview" if getattr(env, "type", None) == 1 else None


# --- info of a LeRobotDataset folder ----------------------------------------------------------------------------

def lerobot_info(root: str, filter_key: str | None = None) -> dict:
    """``info`` of a LeRobotDataset folder in :func:`dataset_info`'s shape, with the keys as modmimic reads them
    (``observation.state`` -> ``state``, ``observation.images.<cam>`` -> ``<cam>_image``, ``action`` ->
    ``actions``): shapes, dtypes, low-dim ranges (images: shape only), the splits as filter keys, the env metadata
    written by ``convert --to lerobot``. Missing data or video files and row counts that disagree with
    ``meta/info.json`` are errors."""
    from modmimic.data.hdf5 import DatasetError
    from modmimic.data.lerobot import LeRobotSource, check_codec, read_rows

    try:
        src = LeRobotSource(root, filter_key)
        meta = src.meta
        errors = []
        for feat in meta.video_features():
            try:
                check_codec(meta, feat)
            except DatasetError as e:
                errors.append(str(e))
        for e in src.episodes:
            for feat, (video, _) in e["videos"].items():
                if not os.path.isfile(video):
                    errors.append(f"{video}: missing video file ({feat}, episode {e['index']})")
            if not os.path.isfile(e["data_file"]):
                errors.append(f"{e['data_file']}: missing data file (episode {e['index']})")
        low = sorted({s[1] for s in src.sources.values() if s[0] == "low_dim"})
        cols = low + ["action"] + [c for c in ("next.reward", "next.done") if c in meta.features]
        rows = read_rows(meta, src.episodes, cols) if not errors else {}
    except DatasetError as e:
        raise ToolError(str(e)) from None
    keys = {}

    def add(name, feat, sl=None, shape=None):
        ft = meta.features[feat]
        vals = [r[feat] if sl is None else r[feat][:, sl] for r in rows.values()]
        lo = min((float(np.min(v)) for v in vals if v.size), default=None)
        hi = max((float(np.max(v)) for v in vals if v.size), default=None)
        keys[name] = {"shape": list(shape if shape is not None else ft.get("shape") or []), "dtype": ft.get("dtype"),
                      "min": lo, "max": hi, "feature": feat}

    for k, s in sorted(src.sources.items()):
        if s[0] == "low_dim":
            add(f"obs/{k}", s[1], s[2], s[3])
        else:
            keys[f"obs/{k}"] = {"shape": list(s[2]), "dtype": "uint8", "min": None, "max": None, "feature": s[1],
                                "storage": meta.features[s[1]].get("dtype")}
    add("actions", "action")
    for name, feat in (("rewards", "next.reward"), ("dones", "next.done")):
        if feat in meta.features:
            add(name, feat, shape=[])
    lengths = np.array([e["length"] for e in src.episodes])
    splits = {}
    for k in sorted(meta.info.get("splits") or {}):
        try:
            splits[k] = len(meta.split(k))
        except DatasetError as e:
            errors.append(str(e))
    act = keys["actions"]
    return {"path": root, "format": f"LeRobotDataset {meta.version}", "fps": meta.fps, "filter_key": filter_key,
            "num_demos": len(src.episodes), "num_samples": int(lengths.sum()) if len(lengths) else 0,
            "total_attr": meta.info.get("total_frames") if filter_key is None else None,
            "length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
            "keys": keys, "filter_keys": splits, "env_meta": meta.env_meta() or None,
            "tasks": sorted({t for e in src.episodes for t in e["tasks"]}),
            "actions_in_unit_range": None if act["min"] is None else (act["min"] >= -1.0 and act["max"] <= 1.0),
            "mix": None, "errors": errors, "warnings": []}


# --- command line -----------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description="Inspect and split robomimic HDF5 datasets.")
    sub = ap.add_subparsers(dest="command", required=True)
    i = sub.add_parser("info", help="demos, samples, per-key shapes/dtypes/ranges, filter keys, env metadata")
    i.add_argument("path")
    i.add_argument("--filter-key", default=None, help="only the demos of mask/<KEY>")
    i.add_argument("--json", action="store_true", help="print the information as JSON")
    i.add_argument("--strict", action="store_true", help="exit with status 1 when actions are outside [-1, 1]")
    s = sub.add_parser("split", help="write mask/train and mask/valid (seeded, reproducible)")
    s.add_argument("path")
    s.add_argument("--valid-fraction", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--filter-key", default=None, help="split the demos of mask/<KEY> into <KEY>_train/<KEY>_valid")
    s.add_argument("--overwrite", action="store_true", help="replace existing masks of the same names")
    o = sub.add_parser("states_to_obs", help="re-render observations (camera images, depth) from the stored states")
    o.add_argument("path")
    o.add_argument("out")
    o.add_argument("--camera-names", nargs="*", default=[], help="cameras to render, e.g. agentview robot0_eye_in_hand")
    o.add_argument("--camera-height", type=int, default=84)
    o.add_argument("--camera-width", type=int, default=84)
    o.add_argument("--depth", action="store_true", help="also <camera>_depth (float32 metres, [T, H, W, 1])")
    o.add_argument("--workers", type=int, default=1, help="render demos in this many processes")
    o.add_argument("--exclude-next-obs", action="store_true", help="write no next_obs")
    o.add_argument("--compress", action="store_true", help="gzip every observation dataset")
    o.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    x = sub.add_parser("extract_action_dict", help="write a copy with action_dict/{rel_pos, rel_rot_axis_angle, "
                       "rel_rot_6d, gripper} (and abs_* from actions_abs) per demo")
    x.add_argument("path")
    x.add_argument("out")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m = sub.add_parser("merge", help="several robomimic HDF5 files into one (masks, env_args, attributes kept)")
    m.add_argument("inputs", nargs="+")
    m.add_argument("-o", "--out", required=True, help="the merged file")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    fl = sub.add_parser("filter", help="write a filter key (mask/<NAME>) of the demos meeting every criterion")
    fl.add_argument("path")
    fl.add_argument("--name", required=True, help="the new filter key")
    fl.add_argument("--success", dest="success", action="store_const", const=True, default=None,
                    help="successful demos (attribute 'success', else a reward of 1)")
    fl.add_argument("--failed", dest="success", action="store_const", const=False, help="unsuccessful demos")
    fl.add_argument("--min-return", type=float, default=None)
    fl.add_argument("--max-return", type=float, default=None)
    fl.add_argument("--min-length", type=int, default=None)
    fl.add_argument("--max-length", type=int, default=None)
    fl.add_argument("--demos", default=None, help="comma-separated demo names (demo_0,demo_7) or @file (one a line)")
    fl.add_argument("--from-key", default=None, help="choose among the demos of mask/<KEY>")
    fl.add_argument("--overwrite", action="store_true", help="replace an existing mask/<NAME>")
    pb = sub.add_parser("playback", help="demos to an MP4, from their stored images or their simulator states")
    pb.add_argument("path")
    pb.add_argument("-o", "--out", required=True, help="the MP4 file")
    pb.add_argument("--demos", default=None, help="comma-separated demo names (default: every demo)")
    pb.add_argument("--filter-key", default=None, help="the demos of mask/<KEY>")
    pb.add_argument("--from", dest="source", default="auto", choices=["auto", "images", "states"])
    pb.add_argument("--camera", default=None, help="camera (images: <camera>_image; states: the render camera, "
                    "robosuite's agentview by default)")
    pb.add_argument("--size", type=int, default=256, help="--from states: rendered height and width")
    pb.add_argument("--fps", type=int, default=20)
    pb.add_argument("--overwrite", action="store_true", help="replace an existing video")
    c = sub.add_parser("convert", help="robomimic HDF5 <-> LeRobotDataset; Minari / D4RL -> robomimic HDF5")
    c.add_argument("path")
    c.add_argument("out")
    c.add_argument("--to", required=True, choices=["lerobot", "robomimic"])
    c.add_argument("--lossless", action="store_true", help="--to lerobot: images as PNG in the Parquet rows "
                   "(exact) instead of video")
    c.add_argument("--codec", default="libsvtav1", choices=["libsvtav1", "h264", "hevc"],
                   help="--to lerobot: video codec (LeRobot's default: libsvtav1)")
    c.add_argument("--crf", type=int, default=None, help="--to lerobot: video quality (libsvtav1: 30, x264/x265: 23)")
    c.add_argument("--fps", type=int, default=20, help="--to lerobot: frames per second (robomimic data: 20)")
    c.add_argument("--task", default=None, help="--to lerobot: the task string (default: the env name)")
    c.add_argument("--filter-key", default=None, help="--to lerobot: only the demos of mask/<KEY>")
    c.add_argument("--env-name", default=None, help="D4RL input: the gym environment id for env_args")
    c.add_argument("--workers", type=int, default=None, help="--to robomimic: video decoding threads (default 2)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return ap


def run_convert(args) -> int:
    from modmimic.data import convert as V
    from modmimic.data.hdf5 import DatasetError
    from modmimic.data.lerobot import is_lerobot_root

    try:
        if args.to == "lerobot":
            if os.path.isdir(args.path):
                raise ToolError(f"{args.path}: --to lerobot reads a robomimic HDF5 file (this is a folder)")
            s = V.robomimic_to_lerobot(args.path, args.out, lossless=args.lossless, codec=args.codec, crf=args.crf,
                                       fps=args.fps, task=args.task, filter_key=args.filter_key,
                                       overwrite=args.overwrite)
            what = f"images as {s['images']}" if s["images"] else "no images"
        elif is_lerobot_root(args.path):
            s = V.lerobot_to_robomimic(args.path, args.out, overwrite=args.overwrite, workers=args.workers)
            what = "keys " + ", ".join(s["keys"])
        elif V.is_minari(args.path):
            s = V.minari_to_robomimic(args.path, args.out, overwrite=args.overwrite)
            what = "from Minari"
        elif os.path.isfile(args.path) and V.is_d4rl(args.path):
            s = V.d4rl_to_robomimic(args.path, args.out, env_name=args.env_name, overwrite=args.overwrite)
            what = "from D4RL-style HDF5"
        else:
            problem = C.path_problem(args.path) if not os.path.isdir(args.path) else None
            raise ToolError(problem or f"{args.path}: not a LeRobotDataset folder (meta/info.json), a Minari dataset "
                            "folder (metadata.json) or a D4RL-style HDF5 (observations, actions, rewards, terminals)")
    except DatasetError as e:
        raise ToolError(str(e)) from None
    print(f"{PROG}: wrote {s['episodes']} episodes ({s['frames']} frames; {what}) to {s['path']}")
    return 0


def run_states_to_obs(args) -> int:
    from modmimic.data.hdf5 import DatasetError
    from modmimic.envs import EnvError
    from modmimic.states_to_obs import StatesToObsError, states_to_obs

    try:
        s = states_to_obs(args.path, args.out, args.camera_names, args.camera_height, args.camera_width, args.depth,
                          args.workers, next_obs=not args.exclude_next_obs, compress=args.compress,
                          overwrite=args.overwrite, progress=lambda line: print(line, flush=True))
    except (StatesToObsError, DatasetError, EnvError) as e:
        raise ToolError(str(e)) from None
    print(f"{PROG}: wrote {s['demos']} demos ({s['samples']} samples; {', '.join(s['keys']) or 'no cameras'}) to "
          f"{s['path']} ({s['bytes'] / 1e6:.1f} MB) in {s['wall_seconds']:.0f} s")
    return 0


def run_filter(args) -> int:
    demos = None
    if args.demos is not None:
        text = args.demos
        if text.startswith("@"):
            from modmimic.stored import read_text

            text = read_text(text[1:], "demo list").replace("\n", ",")
        demos = [d.strip() for d in text.split(",") if d.strip()]
    if all(v is None for v in (args.success, args.min_return, args.max_return, args.min_length, args.max_length,
                               demos)):
        raise ToolError("filter needs a criterion: --success/--failed, --min-return/--max-return, "
                        "--min-length/--max-length or --demos")
    chosen = select_demos(args.path, args.success, args.min_return, args.max_return, args.min_length,
                          args.max_length, demos, args.from_key)
    write_filter_key(args.path, args.name, chosen, args.overwrite)
    print(f"mask/{args.name}: {len(chosen)} demos")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "merge":
            s = merge_datasets(args.inputs, args.out, args.overwrite)
            print(f"{PROG}: wrote {s['demos']} demos ({s['samples']} samples) from "
                  + ", ".join(f"{p} ({n})" for p, n in s["from"]) + f" to {s['path']}; filter keys: "
                  + (", ".join(f"{k} ({n})" for k, n in sorted(s["filter_keys"].items())) or "none"))
            return 0
        if args.command == "filter":
            return run_filter(args)
        if args.command == "playback":
            from modmimic.envs import EnvError

            demos = [d.strip() for d in args.demos.split(",") if d.strip()] if args.demos else None
            try:
                s = playback(args.path, args.out, demos, args.filter_key, args.source, args.camera, args.size,
                             args.fps, args.overwrite)
            except EnvError as e:
                raise ToolError(str(e)) from None
            print(f"{PROG}: wrote {s['frames']} frames of {s['demos']} demos (from {s['source']}) to {s['path']}")
            return 0
        if args.command == "info":
            from modmimic.data.lerobot import is_lerobot_root

            from modmimic.data import convert as V

            if is_lerobot_root(args.path):
                info = lerobot_info(args.path, args.filter_key)
            elif V.is_minari(args.path):
                info = V.episodes_info(args.path, "Minari dataset", *V.minari_demos(args.path))
            elif os.path.isfile(args.path) and V.is_d4rl(args.path):
                info = V.episodes_info(args.path, "D4RL-style HDF5", *V.d4rl_demos(args.path))
            else:
                info = dataset_info(args.path, args.filter_key)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print_info(info)
            if info["errors"]:
                print(f"{PROG}: error: training would refuse this file: {info['errors'][0]}"
                      + (f" (and {len(info['errors']) - 1} more problems, listed above)" if len(info["errors"]) > 1
                         else ""), file=sys.stderr)
                return 2
            return 1 if args.strict and info["actions_in_unit_range"] is False else 0
        if args.command == "states_to_obs":
            return run_states_to_obs(args)
        if args.command == "convert":
            return run_convert(args)
        if args.command == "extract_action_dict":
            s = extract_action_dict(args.path, args.out, args.overwrite)
            print(f"{PROG}: wrote {', '.join(s['keys'])} for {s['demos']} demos to {s['path']}")
            return 0
        out = write_split(args.path, args.valid_fraction, args.seed, args.filter_key, args.overwrite)
        for name, names in out.items():
            print(f"mask/{name}: {len(names)} demos")
        return 0
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0
    except (ToolError, ConfigError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as e:  # unreadable or mis-structured file
        print(f"{PROG}: error: {getattr(args, 'path', None) or args.inputs}: cannot read it as a robomimic dataset "
              f"({type(e).__name__}: {e})",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
