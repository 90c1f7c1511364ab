"""What a training run writes to ``models/``: which checkpoints an epoch saves (robomimic's ``experiment.save``
rules), the recipe files a checkpoint came from, and atomic writes."""
from __future__ import annotations

import glob
import os
import time

import numpy as np
import torch
from omegaconf import DictConfig

from modmimic.config import ConfigError
from modmimic.policy import save_checkpoint


def checkpoint_names(save_cfg, epoch: int, valid_loss, rollout: dict | None, best: dict,
                     since_last_save: float) -> tuple[list, dict, bool, bool]:
    """Which checkpoints epoch ``epoch`` writes besides ``last.pth`` (robomimic's ``experiment.save`` rules):
    ``(names, best scores updated, new best success rate?, periodic save?)``."""
    best, names, new_best_rollout = dict(best), [], False
    if valid_loss is not None and valid_loss < best["valid_loss"]:
        best["valid_loss"] = valid_loss
        if save_cfg.enabled:
            names.append("best_validation.pth")
            if save_cfg.on_best_validation:
                names.append(f"model_epoch_{epoch}_best_validation_{valid_loss:.6g}.pth")
    if rollout:
        sr = [m["Success_Rate"] for m in rollout.values() if "Success_Rate" in m]
        ret = [m["Return"] for m in rollout.values() if "Return" in m]
        if sr and float(np.mean(sr)) > best["success_rate"]:
            best["success_rate"], new_best_rollout = float(np.mean(sr)), True
            if save_cfg.enabled:
                names.append("best_rollout_success.pth")
                if save_cfg.on_best_rollout_success_rate:
                    names.append(f"model_epoch_{epoch}_success_{best['success_rate']:.4g}.pth")
        if ret and float(np.mean(ret)) > best["return"]:
            best["return"] = float(np.mean(ret))
            if save_cfg.enabled and save_cfg.on_best_rollout_return:
                names.append(f"model_epoch_{epoch}_return_{best['return']:.4g}.pth")
    periodic = bool(save_cfg.enabled and (
        (save_cfg.every_n_epochs and epoch % int(save_cfg.every_n_epochs) == 0)
        or epoch in list(save_cfg.epochs or [])
        or (save_cfg.every_n_seconds and since_last_save > save_cfg.every_n_seconds)))
    if periodic:
        names.append(f"model_epoch_{epoch}.pth")
    return names, best, new_best_rollout, periodic


def recipe_sources(config: DictConfig) -> list:
    """``[{"recipe", "file", "sha256"}]``: the files the run's recipe came from (the recipe, then the parents it
    inherits), as found when the run was built (``$MODMIMIC_RECIPE_PATH`` first, then the shipped recipes); empty
    when the recipe is not a file (built in Python)."""
    import hashlib

    from modmimic.config import find_recipe, recipe_lineage

    try:
        names = recipe_lineage(str(config.recipe_name))
    except (ConfigError, OSError, ValueError):
        return []
    out = []
    for name in names:
        try:
            path = find_recipe(name)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except (ConfigError, OSError):
            continue
        out.append({"recipe": str(name), "file": str(path), "sha256": digest})
    return out


def write_checkpoint(path: str, ckpt: dict) -> None:
    """Atomic save. ``MODMIMIC_TEST_SLOW_SAVE=<seconds>`` stretches the write of the temporary file over that long
    (tests kill the process in the middle of it)."""
    delay = float(os.environ.get("MODMIMIC_TEST_SLOW_SAVE", "0") or 0)
    if delay <= 0:
        save_checkpoint(path, ckpt)
        return
    import io as _io

    from modmimic.io import _atomic_write_bytes

    from modmimic.policy import encode_checkpoint

    buf = _io.BytesIO()
    torch.save(encode_checkpoint(ckpt), buf)
    data = buf.getbuffer()
    chunk = max(1, len(data) // 20)

    def slow(f):
        for i in range(0, len(data), chunk):
            f.write(data[i:i + chunk])
            f.flush()
            time.sleep(delay / 20)

    _atomic_write_bytes(path, slow)


def _remove_stale_temps(models_dir: str) -> None:
    """Temporary files of writes that a crash interrupted (the real files are intact)."""
    for p in glob.glob(os.path.join(models_dir, ".*.tmp")):
        try:
            os.unlink(p)
        except OSError:
            pass
