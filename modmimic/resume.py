"""Resuming and restarting runs: the config stored in a run directory (with command-line overrides checked against
it, no recipe file read), and the trainer's state restored from ``last.pth`` (networks, optimizers, schedulers,
samplers, RNG streams, counters and best scores)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from modmimic.algo import Algo
from modmimic.config import ConfigError, finalize
from modmimic.data.build import TrainData
from modmimic.logger import RUN_MARKER
from modmimic.policy import CheckpointError, check_weights, load_checkpoint, one_line
from modmimic.stored import StoredFileError, check_stored_config, load_run_config
from modmimic.trust import stored_config_modules


def rng_state() -> dict:
    """Python's, numpy's and torch's global RNG states as plain containers and tensors (checkpoints hold no other
    objects)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {"python": {"version": version, "internal": list(internal), "gauss_next": gauss},
             "numpy": {"bit_generator": str(np_state["bit_generator"]),
                       "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    p, n = state["python"], state["numpy"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["internal"]), p["gauss_next"]))
    np.random.set_state({"bit_generator": str(n["bit_generator"]),
                         "state": {"key": np.asarray(n["key"].numpy(), dtype=np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_config(run_dir: str, overrides=()) -> DictConfig:
    """The config a run was trained with (from its ``last.pth``), with ``overrides`` (``key=value`` strings, e.g.
    ``train.num_epochs=100``) applied and ``resume``/``resume_dir`` set. The stored config is data
    (:mod:`modmimic.stored`): callables only inside the trusted modules, no interpolation resolvers."""
    marker = os.path.join(run_dir, RUN_MARKER)
    ckpt = load_checkpoint(marker)
    stored = (ckpt.get("trainer_state") or {}).get("config") or ckpt["config"]
    try:
        check_stored_config(stored, marker, stored_config_modules())
    except StoredFileError as e:
        raise CheckpointError(str(e)) from None
    return run_config(stored, overrides, resume_dir=run_dir)


def restart_config(run_dir: str, overrides=()) -> DictConfig:
    """The config of a run that ended before its first checkpoint (its ``config.yaml``) with ``overrides`` applied,
    set to start from scratch (a new run directory). The file is read under the stored-file rules
    (:func:`modmimic.stored.load_run_config`): a name outside the trusted modules is refused before anything
    is built."""
    path = os.path.join(run_dir, "config.yaml")
    stored = load_run_config(path, stored_config_modules())
    if "recipe_name" not in stored or not isinstance(stored.get("train"), dict):
        raise ConfigError(f"{path} is not a modmimic config; start a new run without resume=true")
    return run_config(stored, overrides, resume_dir=None)


def run_config(stored: dict, overrides, resume_dir: str | None) -> DictConfig:
    """A stored run config (already checked) with ``overrides``, set to resume ``resume_dir`` (None: a new run)."""
    cfg = with_overrides(OmegaConf.create(stored), overrides)
    with open_dict(cfg):
        cfg.resume = resume_dir is not None
        cfg.resume_dir = resume_dir
    return finalize(cfg)


_ABSENT = object()


def with_overrides(stored: DictConfig, overrides=()) -> DictConfig:
    """``stored`` (a run's config) with ``key=value`` overrides applied. Keys must exist in the stored config and
    values keep their types, except ``+key=value``, which adds a key (hydra's syntax); no recipe file is read (the stored config is the whole tree). Run-selection keys
    (``recipe``, ``preset``, ``resume``, ``resume_dir``, ``train.output_dir``) and hydra's are ignored."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from modmimic.config import _leaf_paths, _type_ok, closest

    skip = ("recipe", "preset", "resume", "resume_dir", "train.output_dir", "dataset")
    overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in skip
                 and not o.lstrip("+~").startswith("hydra")]
    if not overrides:
        return stored
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line: {str(e).splitlines()[0]}") from None
    cfg = stored
    for o in parsed:
        key = o.key_or_group
        current = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if current is _ABSENT and o.is_add():  # hydra's +key=value: a key the stored config does not have
            OmegaConf.update(cfg, key, o.value(), merge=False, force_add=True)
            continue
        if current is _ABSENT:
            valid = [p for p, _ in _leaf_paths(cfg)]
            raise ConfigError(f"unknown config key {key!r} for the stored run{closest(key, valid)}")
        if o.is_delete():
            OmegaConf.update(cfg, key, None, merge=False)
            continue
        value = o.value()
        if not isinstance(current, (DictConfig, ListConfig)) and not _type_ok(current, value):
            raise ConfigError(f"config key {key!r} must be {type(current).__name__}, got {value!r}")
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def restore_run(algo: Algo, data: TrainData, ckpt: dict, source: str) -> tuple[int, int, dict]:
    """Networks, optimizers, schedulers, samplers and RNG states from a run's ``last.pth``; returns
    ``(start epoch, global step, best scores, steps of the start epoch already done)``. A checkpoint that does not fit is a :class:`CheckpointError`."""
    model = ckpt["model"]
    check_weights(algo, model.get("nets", model), source)
    saved = (ckpt.get("task_vocab") or {}).get("names")
    now = None if data.task_vocab is None else data.task_vocab.names
    if saved != now:  # a multi-task run's task rows must mean the same tasks after a resume
        raise CheckpointError(f"{source}: cannot resume from it: it was trained on tasks {saved}, the data now gives "
                              f"{now}")
    try:
        algo.deserialize(model, load_optimizers=True)
        ts, vs = ckpt["trainer_state"], ckpt["variable_state"]
        data.train_sampler.load_state_dict(ts["samplers"]["train"])
        if data.valid_sampler is not None and ts["samplers"].get("valid") is not None:
            data.valid_sampler.load_state_dict(ts["samplers"]["valid"])
        set_rng_state(ts["rng"])
        start_epoch, global_step = int(vs["epoch"]) + 1, int(vs["global_step"])
        done_steps = int(vs.get("epoch_step", 0))
        best = {"valid_loss": float(vs["best_valid_loss"]), "success_rate": float(vs["best_success_rate"]),
                "return": float(vs["best_return"])}
    except (ConfigError, KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {one_line(e)}"
        raise CheckpointError(f"{source}: cannot resume from it: its trainer state, variable state or optimizer "
                              f"state does not fit this run ({what})") from None
    return start_epoch, global_step, best, done_steps
