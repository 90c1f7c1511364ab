"""Structural checks of a robomimic HDF5 file, shared by training (:func:`modmimic.data.hdf5.load_episode_store`)
and ``python -m modmimic.dataset info``: one place that decides what training refuses.

They read attributes, shapes and dtypes only (no data), so they run before anything is allocated. Values (NaN/Inf)
are checked where the data is read. Functions return ``(errors, warnings)``: lists of one-line messages naming the
file, demo and dataset. Neither torch nor the training code is imported here.
"""
from __future__ import annotations

import os
import re

import h5py
import numpy as np

DEMO_NAME = re.compile(r"demo_\d+$")
# per-step datasets that training reads; anything else (states, model_file, ...) only warns
TRAINING_GROUPS = ("obs/", "next_obs/")
TRAINING_DATASETS = ("actions", "rewards", "dones")


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a dataset file (None when it may be one)."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "meta", "info.json")):
        return None  # a LeRobotDataset folder
    if os.path.isdir(path):
        return (f"dataset path {path} is a directory, not an HDF5 file (nor a LeRobotDataset folder: no "
                "meta/info.json); pass the .hdf5 file inside it")
    if not os.path.exists(path):
        return f"dataset file not found: {path}"
    return None


def skipped_groups(data: h5py.Group) -> list[str]:
    """Entries of ``data/`` that are not demos (robomimic reads only ``demo_<int>`` groups)."""
    return [n for n in data.keys() if not DEMO_NAME.match(n)]


def link_problem(group: h5py.Group, name: str) -> str | None:
    """Why ``group/name`` must not be read (a link to another file, on any part of the path), or None."""
    node, parts = group, name.split("/")
    for i, part in enumerate(parts):
        try:
            link = node.get(part, getlink=True)
        except (KeyError, ValueError, OSError):
            return None
        if isinstance(link, h5py.ExternalLink):
            return (f"{node.name}/{part} is an external link to {link.filename}:{link.path}; modmimic reads only data "
                    "stored in the dataset file itself")
        if link is None or i == len(parts) - 1:
            return None
        try:
            node = node[part]
        except (KeyError, OSError):
            return None
        if not isinstance(node, h5py.Group):
            return None
    return None


def skipped_warning(path: str, names: list[str]) -> str | None:
    if not names:
        return None
    return (f"{path}: data/ holds {len(names)} entries not named demo_<N> ({', '.join(sorted(names)[:5])}"
            f"{', ...' if len(names) > 5 else ''}); they are not demos and are skipped (rename them demo_<N> to "
            "train on them)")


def is_training_dataset(name: str) -> bool:
    return name.startswith(TRAINING_GROUPS) or name in TRAINING_DATASETS or name.startswith("action_dict/")


def check_demos(f: h5py.File, demos: list[str], path: str, keys: list[str] | None = None) -> tuple[list, list]:
    """Errors and warnings for ``demos``: a missing or non-positive ``num_samples``, and, for each per-step dataset
    (``keys``: relative paths such as ``obs/pos``; None: every dataset of every demo), a missing entry, a
    non-numeric dtype, or a row count that differs from ``num_samples``. With ``keys=None``, problems in datasets
    that training never reads (``states``, ...) are warnings."""
    errors, warnings = [], []
    data = f["data"]
    for d in demos:
        g = data[d]
        if not isinstance(g, h5py.Group):
            errors.append(f"{path}: data/{d} is not a group")
            continue
        n = g.attrs.get("num_samples")
        if n is None:
            errors.append(f"{path}: data/{d} has no 'num_samples' attribute")
            continue
        try:
            n = int(np.asarray(n).reshape(()))
        except (TypeError, ValueError):
            errors.append(f"{path}: data/{d} attribute num_samples={n!r} is not an integer")
            continue
        if n <= 0:
            errors.append(f"{path}: data/{d} is empty (num_samples={n}); a demo needs at least one step: remove it "
                          "or leave it out with a filter key (mask/<key>)")
            continue
        names = keys if keys is not None else [name for name, _ in walk_datasets(g) if name != "model_file"]
        for name in names:
            problem = link_problem(g, name)
            if problem:
                errors.append(f"{path}: {problem}")
                continue
            try:
                ds = g[name]
            except KeyError:
                errors.append(f"{path}: data/{d}/{name} is missing")
                continue
            if not isinstance(ds, h5py.Dataset):
                errors.append(f"{path}: data/{d}/{name} is a group, expected a per-step dataset")
                continue
            out = errors if keys is not None or is_training_dataset(name) else warnings
            if ds.dtype.kind not in "fiub":
                out.append(f"{path}: data/{d}/{name} has dtype {ds.dtype} (expected numbers: float, int or bool)")
            elif ds.ndim == 0:
                out.append(f"{path}: data/{d}/{name} is a scalar, expected one row per step")
            elif ds.shape[0] != n:
                out.append(f"{path}: data/{d}/{name} has {ds.shape[0]} rows but num_samples={n}")
    return errors, warnings


def action_range_warning(path: str, key: str, lo: float, hi: float) -> str | None:
    """robomimic expects normalized actions: a message when ``[lo, hi]`` leaves [-1, 1] (None when it does not)."""
    if lo >= -1.0 and hi <= 1.0:
        return None
    return (f"{path}: {key} span [{lo:.4g}, {hi:.4g}], outside [-1, 1]; robomimic expects normalized actions and "
            f"policies with tanh outputs cannot reach these: set {min_max_override(key)} (or gaussian)")


def min_max_override(key: str) -> str:
    """The command-line override that min-max normalizes action key ``key``."""
    # hydra's override keys cannot hold '/': action_dict/<k> entries are added as a dict
    return (f"+train.action_config={{{key}:{{normalization:min_max}}}}" if "/" in key
            else f"train.action_config.{key}.normalization=min_max")


def walk_datasets(group: h5py.Group, prefix: str = ""):
    """``(relative path, dataset)`` of every dataset below ``group``."""
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            yield from walk_datasets(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v
