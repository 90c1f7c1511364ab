"""Normalization statistics with robomimic's formulas.

Convention everywhere: ``normalized = (raw - offset) / scale``.

* Observations (robomimic ``hdf5_normalize_obs``): per key, ``offset = mean`` and ``scale = std + 1e-3`` over every
  observation of the split (population std, merged per demo with Chan's parallel algorithm), shape ``(1, *shape)``.
* Actions (robomimic ``train.action_config``): per action key, ``None`` (identity), ``"min_max"`` (to
  [-0.999999, 0.999999], dims with range < 1e-4 centred) or ``"gaussian"`` (mean/std, std < 1e-6 replaced by 1).
"""
from __future__ import annotations

import numpy as np

OBS_STD_EPS = 1e-3
MINMAX_RANGE_EPS = 1e-4
MINMAX_OUT = 0.999999
GAUSSIAN_STD_EPS = 1e-6


def moments(x: np.ndarray) -> dict:
    """Count, mean and sum of squared deviations of ``x`` over its first axis."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0, keepdims=True)
    return {"n": x.shape[0], "mean": mean, "sqdiff": ((x - mean) ** 2).sum(axis=0, keepdims=True),
            "min": x.min(axis=0, keepdims=True), "max": x.max(axis=0, keepdims=True)}


def merge_moments(a: dict | None, b: dict) -> dict:
    """Chan et al.'s parallel merge of two :func:`moments` results."""
    if a is None:
        return b
    n = a["n"] + b["n"]
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * b["n"] / n
    sqdiff = a["sqdiff"] + b["sqdiff"] + delta ** 2 * a["n"] * b["n"] / n
    return {"n": n, "mean": mean, "sqdiff": sqdiff,
            "min": np.minimum(a["min"], b["min"]), "max": np.maximum(a["max"], b["max"])}


def obs_stats_from_moments(m: dict) -> dict:
    std = np.sqrt(m["sqdiff"] / m["n"])
    return {"offset": m["mean"].astype(np.float32), "scale": (std + OBS_STD_EPS).astype(np.float32)}


def action_stats_from_moments(m: dict, normalization: str | None) -> dict:
    """``{"offset", "scale"}`` (shape ``(1, d)``) for one action key."""
    d = m["mean"].shape[-1]
    if normalization is None or normalization in ("none", "None"):
        return {"offset": np.zeros((1, d), np.float32), "scale": np.ones((1, d), np.float32)}
    if normalization == "min_max":
        lo, hi = m["min"], m["max"]
        rng = hi - lo
        ignore = rng < MINMAX_RANGE_EPS
        rng = np.where(ignore, 2 * MINMAX_OUT, rng)
        scale = rng / (2 * MINMAX_OUT)
        offset = lo + scale * MINMAX_OUT
        offset = np.where(ignore, lo, offset)  # ignored dims: (raw - min) / 1 -> centred at 0 for constant data
        return {"offset": offset.astype(np.float32), "scale": scale.astype(np.float32)}
    if normalization == "gaussian":
        std = np.sqrt(m["sqdiff"] / m["n"])
        std = np.where(std < GAUSSIAN_STD_EPS, 1.0, std)
        return {"offset": m["mean"].astype(np.float32), "scale": std.astype(np.float32)}
    raise ValueError(f"unknown action normalization {normalization!r}: expected None, 'min_max' or 'gaussian'")


def stats_to_lists(stats: dict | None) -> dict | None:
    """Nested dict of arrays -> nested lists (checkpoint storage, as robomimic)."""
    if stats is None:
        return None
    return {k: {n: np.asarray(v).tolist() for n, v in d.items()} for k, d in stats.items()}


def stats_from_lists(stats: dict | None) -> dict | None:
    if stats is None:
        return None
    return {k: {n: np.asarray(v, dtype=np.float32) for n, v in d.items()} for k, d in stats.items()}
