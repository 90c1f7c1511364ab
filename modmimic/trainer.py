"""The training loop (robomimic ``scripts/train.py``), as plain functions usable from Python.

    cfg = modmimic.config.compose("bc_rnn", ["train.data=/data/lift.hdf5", "train.num_epochs=50"])
    result = modmimic.trainer.train(cfg)          # -> {"run_dir": ..., "epoch": ..., ...}

One call of :func:`train`:

1. seeds Python's ``random``, numpy and torch with ``train.seed``;
2. loads the train split (``train.hdf5_filter_key``) and, with ``experiment.validate``, the validation split
   (``train.hdf5_validation_filter_key``) into episode stores; observation statistics come from the train split
   (``train.hdf5_normalize_obs``; validation uses them too), action statistics from ``train.action_config``;
   with several datasets in ``train.data`` (co-training, :mod:`modmimic.data.meta`) one store per file, statistics
   pooled over the files, and a :class:`MetaSampler` that draws each batch row's file by weight;
3. builds the algorithm (``algo_factory``), then creates the run directory
   ``<train.output_dir>/<experiment.name>/<YYYYmmddHHMMSS>[_<n>]`` (never an existing one) with ``config.yaml``,
   ``logs/{metrics.jsonl, tb/, curves.png, log.txt}`` and ``models/``;
4. runs epochs of ``experiment.epoch_every_n_steps`` gradient steps, then ``on_epoch_end`` (epoch LR schedules),
   a validation epoch of ``experiment.validation_epoch_every_n_steps`` steps under ``torch.no_grad()`` (co-training:
   then one per file, logged as ``Valid/<name>/...``), rollouts
   (a hook; skipped with a warning while modmimic has no simulator adapter), logging, and checkpoints:
   ``models/last.pth`` every epoch, ``models/best_validation.pth`` on a new best validation loss,
   ``models/best_rollout_success.pth`` on a new best success rate, and ``models/model_epoch_<N>.pth`` per
   ``experiment.save.{every_n_epochs, epochs, every_n_seconds}``. Every file is written through a temporary file
   and a rename, so a crash leaves the previous checkpoint intact.

Resume (``resume=true`` / ``resume_dir=<run dir>``) restores the networks, optimizers, LR schedulers, the samplers'
positions, the torch/numpy/Python RNG states, the epoch and step counters and the best scores from ``last.pth``:
on CPU, 2 epochs + resume to 4 equals 4 epochs bit for bit. ``train.stop_after_epoch`` ends an invocation early
(time-limited jobs); a later resume continues to ``train.num_epochs`` on exactly the same schedule.
"""
from __future__ import annotations

import glob
import math
import os
import random
import resource
import shutil
import sys
import time
import traceback
import warnings

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from modmimic import distributed
from modmimic.algo import Algo, NonFiniteLossError, algo_factory
from modmimic.config import ConfigError, finalize, save_config_yaml
from modmimic.data.build import TrainData, action_settings, build_data, sampler_seed  # noqa: F401  (re-exported)
from modmimic.data.default import default_dataset_path
from modmimic.data.hdf5 import DatasetError
from modmimic.data.sampler import WindowSampler
from modmimic.dataset import dataset_entry, with_data
from modmimic.logger import (RUN_MARKER, RunLogger, check_dir_creatable, find_run_dir, make_run_dir, start_wandb,
                             tee_stdout)
from modmimic.package import check_package
from modmimic.policy import (CheckpointError, RolloutPolicy, check_weights, load_checkpoint, make_checkpoint, one_line,
                             save_checkpoint)
from modmimic.rundir import RunDirError, RunLock, check_run_tree, open_append
from modmimic.stored import StoredFileError, check_stored_config, load_run_config
from modmimic.trust import stored_config_modules, trusting



# --- device -------------------------------------------------------------------------------------------------

def device_of(cfg: DictConfig) -> torch.device:
    dev = str(cfg.device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={dev} but CUDA is not available on this machine (torch {torch.__version__}); "
                          "use device=cpu")
    try:
        return torch.device(dev)
    except RuntimeError:
        raise ConfigError(f"device must be cpu, cuda or cuda:<n>, got {dev!r}") from None


def preset_note(cfg: DictConfig) -> str | None:
    """What to say at start-up when the run's preset has recipe entries but none for this recipe (nor for a recipe
    it extends): only the preset's settings for every recipe apply, and the recipe's own schedule stands."""
    from modmimic.config import load_preset, preset_family

    preset, recipe = cfg.get("preset"), str(cfg.get("recipe_name"))
    try:
        if not preset or not (load_preset(str(preset)).get("recipes") or {}) or preset_family(str(preset), recipe):
            return None
    except ConfigError:  # a recipe file that is gone (a resumed run from elsewhere): nothing to say
        return None
    return (f"preset {preset!r} has no entry for recipe {recipe!r} (nor for a recipe it extends): only its settings "
            f"for every recipe apply; this run trains {cfg.train.num_epochs} epochs x "
            f"{cfg.experiment.epoch_every_n_steps} steps at batch {cfg.train.batch_size} (the recipe's schedule unless "
            "the command line changed it)")


# --- randomness -----------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


# --- one epoch --------------------------------------------------------------------------------------------------

def _progress(n_steps: int, desc: str, enabled):
    if enabled is False:
        return None
    from tqdm import tqdm

    return tqdm(total=n_steps, desc=desc, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True,
                disable=None if enabled is None else not enabled)


def run_epoch(algo: Algo, sampler: WindowSampler, n_steps: int, epoch: int, validate: bool = False,
              progress=None, desc: str = "", should_stop=None) -> dict:
    """``n_steps`` batches through ``algo.train_on_batch`` (``validate``: losses only, under ``no_grad``, eval
    mode). Returns the step-averaged metrics as floats (through ``algo.log_info``) plus robomimic's timings in
    minutes (``Time_Data_Loading``, ``Time_Process_Batch``, ``Time_Train_Batch``, ``Time_Log_Info``,
    ``Time_Epoch``), ``Steps_per_Second`` and ``Steps_Done``. ``progress``: None = a tqdm bar when stderr is a
    terminal. ``should_stop``: a callable asked after each step; when it says so the epoch ends there (the metrics
    average the steps done)."""
    if validate:
        algo.set_eval()
    else:
        algo.set_train()
    bar = _progress(n_steps, desc, progress)
    post_every = max(1, n_steps // 20)
    steps = {}
    t_data = t_proc = t_train = 0.0
    t_epoch = time.perf_counter()
    done = 0
    with torch.set_grad_enabled(not validate):
        for i in range(n_steps):
            t0 = time.perf_counter()
            batch = sampler.sample()
            t1 = time.perf_counter()
            batch = algo.process_batch_for_training(batch)
            batch = algo.postprocess_batch_for_training(batch)
            t2 = time.perf_counter()
            info = algo.train_on_batch(batch, epoch, validate=validate)
            t3 = time.perf_counter()
            t_data, t_proc, t_train = t_data + t1 - t0, t_proc + t2 - t1, t_train + t3 - t2
            for k, v in info.items():
                steps.setdefault(k, []).append(v)
            if bar is not None:
                bar.update(1)
                if (i % post_every == 0 or i == n_steps - 1) and "Loss" in info:
                    bar.set_postfix(loss=f"{float(info['Loss']):.4g}", refresh=False)
            done = i + 1
            if should_stop is not None and should_stop():
                break
    if bar is not None:
        bar.close()
    t4 = time.perf_counter()
    mean = {}
    for k, vs in steps.items():
        if torch.is_tensor(vs[0]):
            mean[k] = torch.stack([v.detach().float().mean() for v in vs]).mean()
        elif isinstance(vs[0], (int, float)) and not isinstance(vs[0], bool):
            mean[k] = float(np.mean(vs))
    out = algo.log_info(mean)
    if validate:
        out = {k: v for k, v in out.items() if not k.startswith("Optimizer/")}
    t5 = time.perf_counter()
    elapsed = t5 - t_epoch
    out.update(Time_Data_Loading=t_data / 60, Time_Process_Batch=t_proc / 60, Time_Train_Batch=t_train / 60,
               Time_Log_Info=(t5 - t4) / 60, Time_Epoch=elapsed / 60,
               Steps_per_Second=done / elapsed if elapsed > 0 else float("inf"), Steps_Done=done)
    return out


def sampler_scalars(sampler) -> dict:
    """What a sampler reports of itself each epoch (``log_info``: the online sampler's ``Online/*`` environment
    steps, episodes, success rate, env-steps/s); ``{}`` for the window samplers."""
    log_info = getattr(sampler, "log_info", None)
    return log_info() if log_info is not None else {}


def namespaced(prefix: str, metrics: dict) -> dict:
    """robomimic's log names: ``Time_*`` -> ``Timing_Stats/<prefix>_*``, ``Optimizer/*`` as is, the rest
    ``<prefix>/<name>``."""
    out = {}
    for k, v in metrics.items():
        if k == "Steps_Done":
            continue
        if k.startswith("Time_") or k == "Steps_per_Second":
            out[f"Timing_Stats/{prefix}_{k[5:] if k.startswith('Time_') else k}"] = v
        elif k.startswith("Optimizer/"):
            out[k] = v
        else:
            out[f"{prefix}/{k}"] = v
    return out


def per_dataset_scalars(name: str, metrics: dict) -> dict:
    """A co-training dataset's validation metrics as ``Valid/<name>/<metric>`` (no timings, no optimizer state)."""
    return {f"Valid/{name}/{k}": v for k, v in metrics.items()
            if not (k.startswith(("Time_", "Optimizer/")) or k in ("Steps_per_Second", "Steps_Done"))}


# --- rollouts (hook) ----------------------------------------------------------------------------------------
#
# A rollout function is called at the epochs ``rollout_due`` picks, with the policy in eval mode:
#     rollout_fn(policy: RolloutPolicy, epoch: int, cfg, env_meta: dict, run_dir: str)
#         -> {env name: {"Success_Rate": ..., "Return": ..., "Horizon": ..., "Time_Episode": ...}} or None
# Metrics are logged as ``Rollout/<metric>/<env>`` (``Time_*`` as ``Timing_Stats/Rollout_<env>_*``); a new best mean
# success rate saves ``models/best_rollout_success.pth``. If it raises ImportError (a simulator is not installed),
# the run warns once and goes on without rollouts. ``close()`` is called at the end when the function has one.


def no_rollouts(policy: RolloutPolicy, epoch: int, cfg: DictConfig, env_meta: dict, run_dir: str | None = None):
    """A rollout function that does nothing."""
    return None


def default_rollout_fn(progress=None):
    """``(rollout function, None)``: the environment rollouts of :mod:`modmimic.rollout`; or ``(None, reason)`` when
    they cannot be imported. ``progress``: see :class:`modmimic.rollout.TrainingRollouts`."""
    try:
        from modmimic.rollout import TrainingRollouts
    except ImportError as e:
        return None, str(e)
    return TrainingRollouts(progress=progress), None


def rollout_due(cfg: DictConfig, epoch: int) -> bool:
    """Every ``experiment.rollout.rate`` epochs after ``warmstart``, and at ``train.num_epochs`` with
    ``experiment.rollout.at_end`` (configs saved before that key existed: off)."""
    r = cfg.experiment.rollout
    if not r.enabled:
        return False
    if bool(r.get("at_end", False)) and epoch == int(cfg.train.num_epochs):
        return True
    return epoch > int(r.warmstart) and int(r.rate) > 0 and epoch % int(r.rate) == 0


def prepare_rollouts(rollout_fn, cfg: DictConfig, env_meta: dict):
    """``(rollout function or None, why not)``: make the environment now when the hook can (``prepare``), so a
    missing simulator or an environment that cannot be created shows at start-up, not after the first epochs."""
    prepare = getattr(rollout_fn, "prepare", None)
    if rollout_fn is None or prepare is None:
        return rollout_fn, None
    try:
        prepare(cfg, env_meta)
    except ImportError as e:
        return None, f"no simulator installed: {e}"
    except (DatasetError, ValueError) as e:
        return None, f"the environment cannot be created: {e}"
    return rollout_fn, None


def rollout_plan(cfg: DictConfig, rollout_fn, why: str | None, start_epoch: int, last_epoch: int,
                 env_name: str | None = None) -> str:
    """The start-up line that says when rollouts happen in this invocation, or that they do not and why."""
    r = cfg.experiment.rollout
    num_epochs = int(cfg.train.num_epochs)
    if not r.enabled:
        return "rollouts: none (experiment.rollout.enabled=false)"
    if rollout_fn is None:
        return f"rollouts: none ({why or 'no rollout function'})"
    due = [e for e in range(start_epoch, last_epoch + 1) if rollout_due(cfg, e)]
    if not due:
        reason = (f"experiment.rollout.rate={r.rate} > train.num_epochs={num_epochs}" if int(r.rate) > num_epochs
                  else f"none of epochs {start_epoch}-{last_epoch} is a multiple of experiment.rollout.rate={r.rate}"
                  f" after warmstart {r.warmstart}")
        if last_epoch < num_epochs:
            reason += f"; this invocation stops at train.stop_after_epoch={last_epoch}"
        elif not r.get("at_end", False):
            reason += " and experiment.rollout.at_end=false"
        return f"rollouts: none in epochs {start_epoch}-{last_epoch} ({reason})"
    shown = ", ".join(map(str, due)) if len(due) <= 6 else f"{', '.join(map(str, due[:3]))}, ..., {due[-1]}"
    where = f" in {env_name}" if env_name else ""
    return (f"rollouts: {r.n} episodes{where} (horizon {r.horizon}) at epoch{'s' if len(due) > 1 else ''} {shown}"
            f" (every {r.rate} epochs{', and at the last epoch' if r.get('at_end', False) else ''})")


def rollout_scalars(rollout: dict) -> dict:
    out = {}
    for env_name, m in rollout.items():
        for k, v in m.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k.startswith("Time_"):
                out[f"Timing_Stats/Rollout_{env_name}_{k[5:]}"] = v
            else:
                out[f"Rollout/{k}/{env_name}"] = v
    return out



def obs_key_hint(e: DatasetError, cfg: DictConfig, path: str) -> DatasetError:
    """``e`` (an observation key the recipe names is not in the dataset) with the override that fixes it: the
    dataset's low-dim keys (the base config's defaults when the dataset has them all). robomimic's TD3-BC config,
    for one, observes D4RL's single key ``flat``."""
    msg = str(e)
    if "observation key" not in msg or "not found" not in msg:
        return e
    try:
        import h5py

        with h5py.File(path, "r") as f:
            demo = next(iter(f["data"]))
            obs = f["data"][demo]["obs"]
            low_dim = [k for k in obs if obs[k].ndim <= 2]
    except (OSError, KeyError, StopIteration):
        return e
    from modmimic.config import base_config_path

    default = list(OmegaConf.load(base_config_path()).observation.modalities.obs.low_dim)
    keys = default if all(k in low_dim for k in default) else low_dim
    wanted = list(cfg.observation.modalities.obs.low_dim)
    d4rl = " (the recipe follows robomimic's config for D4RL files, whose one observation key is 'flat')" \
        if wanted == ["flat"] else ""
    return DatasetError(f"{msg}. recipe {cfg.recipe_name} observes {wanted}{d4rl}; for this dataset add "
                        f"observation.modalities.obs.low_dim=[{','.join(keys)}]")


def epoch_line(epoch: int, num_epochs: int, scalars: dict, rollout: dict | None, seconds: dict) -> str:
    """The terminal line of one epoch: losses, rollout success (Wilson 95 % interval), speed, and where the
    epoch's time went (``seconds``: ``{"train", "valid", "rollout"}``)."""
    line = f"epoch {epoch}/{num_epochs}  train Loss {scalars.get('Train/Loss', float('nan')):.5g}"
    if scalars.get("Valid/Loss") is not None:
        line += f"  valid Loss {scalars['Valid/Loss']:.5g}"
    for env_name, m in (rollout or {}).items():
        if "Success_Rate" in m:
            line += f"  {env_name} success {m['Success_Rate']:.3f}"
            if "Success_Rate_CI95_Low" in m:
                line += (f" [{m['Success_Rate_CI95_Low']:.2f}, {m['Success_Rate_CI95_High']:.2f}]"
                         f" ({m.get('Num_Success', '?')}/{m.get('Num_Episodes', '?')})")
    if scalars.get("Online/Env_Steps") is not None:
        line += f"  env steps {int(scalars['Online/Env_Steps'])}"
        if scalars.get("Online/Success_Rate") is not None:
            line += f" (training episodes: success {scalars['Online/Success_Rate']:.2f})"
    sps = scalars.get("Timing_Stats/Train_Steps_per_Second")
    if sps is not None:
        line += f"  {sps:.1f} steps/s"
    line += "  " + " + ".join(f"{k} {v:.1f}s" for k, v in seconds.items() if v > 0 or k == "train")
    return line


def wilson_text(m: dict) -> str:
    """``0.940 [0.84, 0.98] (47/50)`` of one environment's rollout metrics."""
    text = f"{m['Success_Rate']:.3f}"
    if "Success_Rate_CI95_Low" in m:
        text += f" (95% CI [{m['Success_Rate_CI95_Low']:.2f}, {m['Success_Rate_CI95_High']:.2f}]"
        text += f", {m['Num_Success']}/{m['Num_Episodes']})" if "Num_Episodes" in m else ")"
    return text


def run_summary(run_dir: str, best_paths: dict, final_rollout: tuple | None, best_rollout: tuple | None,
                seconds: dict, wall: float) -> str:
    """The end-of-run summary: run directory, best checkpoints, final and best success rate (Wilson interval),
    and the wall time split into train / validation / rollouts."""
    lines = [f"run directory: {run_dir}"]
    for what, path in best_paths.items():
        lines.append(f"  {what}: {path}")
    if final_rollout is None:
        lines.append("  success rate: not evaluated in this run (no rollouts)")
    else:
        for env_name, m in final_rollout[1].items():
            if "Success_Rate" in m:
                lines.append(f"  final success rate ({env_name}, epoch {final_rollout[0]}): {wilson_text(m)}")
        for env_name, m in (best_rollout[1] if best_rollout else {}).items():
            if "Success_Rate" in m:
                lines.append(f"  best success rate ({env_name}, epoch {best_rollout[0]}): {wilson_text(m)}")
    other = max(0.0, wall - sum(seconds.values()))
    lines.append(f"  wall time {wall:.1f}s: train {seconds.get('train', 0):.1f}s, validation "
                 f"{seconds.get('valid', 0):.1f}s, rollouts {seconds.get('rollout', 0):.1f}s, other {other:.1f}s")
    return "\n".join(lines)


def discard_unfinished_run(run_dir: str, logger) -> bool:
    """Remove a new run directory that holds no checkpoint (interrupted before its first epoch ended), so no
    empty folder looks like a run. Returns whether it was removed."""
    if os.path.exists(os.path.join(run_dir, RUN_MARKER)):
        return False
    logger.discard()
    shutil.rmtree(run_dir, ignore_errors=True)
    return not os.path.exists(run_dir)


# --- stop signals ---------------------------------------------------------------------------------------------

class RunStopped(KeyboardInterrupt):
    """A run ended by SIGTERM or SIGUSR1 (SLURM's pre-emption warning, Kubernetes, ``timeout``). ``exit_code`` is
    128 + the signal number, as a shell reports a process killed by it; ``saved``: the checkpoint written on the way
    out (None when the run had none yet)."""

    def __init__(self, signum: int, message: str = "", saved: str | None = None):
        import signal

        self.signum, self.saved, self.exit_code = signum, saved, 128 + int(signum)
        name = signal.Signals(signum).name
        super().__init__(f"{name}{': ' + message if message else ''}")


class StopSignals:
    """SIGTERM and SIGUSR1 handlers for the life of a run (main thread only; the previous handlers come back after).

    Until the run has a checkpoint (``graceful`` false) a signal ends it at once, as Ctrl-C does: the new run
    directory, holding nothing, is removed. Afterwards the signal is only noted (``requested()``): the trainer finishes
    the step under way, saves ``last.pth`` (mid-epoch: the epoch's step count is saved too, so a resume continues
    bit for bit) and raises :meth:`stopped`. Under torchrun a signal always ends the run at once (the processes
    would have to agree on the step first); the last checkpoint is the previous epoch's."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.graceful = False
        self.signum = None
        self._old = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False

    def _handle(self, signum, frame):
        if not self.graceful:
            raise RunStopped(signum)
        self.signum = signum

    def requested(self) -> bool:
        return self.signum is not None

    def stopped(self, last_path: str, epoch: int, steps: int, n_steps: int) -> RunStopped:
        where = (f"after epoch {epoch}" if steps >= n_steps else f"in epoch {epoch} after step {steps} of {n_steps}")
        return RunStopped(self.signum, f"stopped {where}; {last_path} holds the run's state", saved=last_path)


# --- resume -------------------------------------------------------------------------------------------------

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
    values keep their types; no recipe file is read (the stored config is the whole tree). Run-selection keys
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


# --- the parts of a run -----------------------------------------------------------------------------------------

def epoch_lengths(cfg: DictConfig, data: TrainData) -> tuple[int, int | None, dict]:
    """Gradient steps per epoch, validation steps per epoch, and per co-training dataset (robomimic: a full pass
    over the split when ``experiment.*_every_n_steps`` is null)."""
    batch = int(cfg.train.batch_size)
    n_train = cfg.experiment.epoch_every_n_steps or max(1, len(data.train_sampler) // batch)
    n_valid = cfg.experiment.validation_epoch_every_n_steps
    if data.valid_sampler is not None and n_valid is None:
        n_valid = max(1, len(data.valid_sampler) // batch)
    n_sets = {name: cfg.experiment.validation_epoch_every_n_steps or max(1, len(s) // batch)
              for name, s in data.valid_sets.items()}
    return int(n_train), n_valid, n_sets


def setup_rollouts(cfg: DictConfig, rollout_fn, progress, group, env_meta: dict, start_epoch: int,
                   last_epoch: int):
    """``(rollout function or None, why not)`` for this invocation: the default simulator rollouts for ``"auto"``,
    shared over the ranks under torchrun, the environment made now when a rollout is due (so a missing simulator
    shows at start-up); a warning when rollouts are enabled but unavailable."""
    why = None
    if not cfg.experiment.rollout.enabled:
        return None, None
    if isinstance(rollout_fn, str) and rollout_fn == "auto":
        rollout_fn, why = default_rollout_fn(progress)
        if why is not None:
            why = f"no simulator installed: {why}"
    if rollout_fn is not None and group.active:  # episodes split over the ranks (or rank 0 alone plays them)
        rollout_fn = distributed.shared_rollouts(rollout_fn, group)
    if rollout_fn is not None and any(rollout_due(cfg, e) for e in range(start_epoch, last_epoch + 1)):
        rollout_fn, why = prepare_rollouts(rollout_fn, cfg, env_meta)
    if rollout_fn is None and why is not None:
        warnings.warn(f"experiment.rollout.enabled is true, but environment rollouts are unavailable ({why}): they "
                      "are skipped (set experiment.rollout.enabled=false to silence this)", stacklevel=3)
    return rollout_fn, why


def validate_epoch(algo: Algo, data: TrainData, n_valid: int, n_sets: dict, epoch: int, group, progress,
                   desc: str) -> tuple[dict, float]:
    """``(Valid/* scalars, seconds)`` of one validation pass (co-training: then each dataset's own, as
    ``Valid/<name>/*``); nothing is stepped."""
    with torch.no_grad():
        m = group.mean_metrics(run_epoch(algo, data.valid_sampler, n_valid, epoch, validate=True, progress=progress,
                                         desc=f"{desc} valid"))
        scalars, seconds = namespaced("Valid", m), 60 * m["Time_Epoch"]
        for name, sampler in data.valid_sets.items():
            m = group.mean_metrics(run_epoch(algo, sampler, n_sets[name], epoch, validate=True, progress=progress,
                                             desc=f"{desc} valid {name}"))
            seconds += 60 * m["Time_Epoch"]
            scalars.update(per_dataset_scalars(name, m))
    algo.set_train()
    return scalars, seconds


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


# --- checkpoints ------------------------------------------------------------------------------------------------

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


def _ram_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


# --- the loop -------------------------------------------------------------------------------------------------

def train(cfg: DictConfig, rollout_fn="auto", progress=None) -> dict:
    """Train ``cfg`` (a composed config, see :func:`modmimic.config.compose`); with ``cfg.resume`` continue the run
    in ``cfg.resume_dir`` (or the one :func:`find_run_dir` finds). ``rollout_fn``: see the rollout hook above
    ("auto": :func:`default_rollout_fn`; None: no rollouts). ``progress``: tqdm bars (None: when stderr is a
    terminal). Returns ``{"run_dir", "epoch", "global_step", "best_valid_loss", "best_success_rate", "metrics"}``
    (``metrics``: the last epoch's scalars).

    The run directory is locked for the whole call (:class:`modmimic.rundir.RunLock`); SIGTERM and SIGUSR1 stop
    the run as Ctrl-C does, and once a checkpoint exists they first finish the current step and save a resumable
    ``last.pth`` (:class:`StopSignals`)."""
    locks: list = []  # the run directory's lock, and the directory when this call created it
    with StopSignals() as signals:
        try:
            return _train(cfg, rollout_fn, progress, locks, signals)
        except KeyboardInterrupt as e:  # Ctrl-C or a stop signal before the loop's own handler was in place
            new = [lock.run_dir for lock in locks if getattr(lock, "created", False)]
            if new and not getattr(e, "modmimic_discarded_run_dir", None) and \
                    not os.path.exists(os.path.join(new[0], RUN_MARKER)):
                shutil.rmtree(new[0], ignore_errors=True)
                e.modmimic_discarded_run_dir = new[0]
            raise
        finally:
            for lock in locks:
                lock.release()


def _train(cfg: DictConfig, rollout_fn, progress, locks: list, signals: "StopSignals") -> dict:
    t_start = time.perf_counter()
    check_package()  # a folder named modmimic/ shadowing the package would fail only when a checkpoint is written
    cfg = with_data(cfg)
    device = device_of(cfg)
    group = distributed.setup(device)  # torchrun: one process per device, rank 0 does the I/O
    device = group.device
    distributed.check_batch_size(cfg.train.batch_size, group)
    resume = bool(cfg.get("resume")) or bool(cfg.get("resume_dir"))
    run_dir = find_run_dir(cfg.train.output_dir, cfg.experiment.name, cfg.get("resume_dir")) if resume else None
    run_dir = group.broadcast_object(run_dir)
    if resume and group.is_main:  # one writer per run directory, and no write through a link out of it
        locks.append(RunLock(run_dir).acquire())
        check_run_tree(run_dir)
    ckpt = load_checkpoint(os.path.join(run_dir, RUN_MARKER)) if resume else None
    if resume and not ckpt.get("trainer_state"):
        raise CheckpointError(f"{run_dir}/{RUN_MARKER} has no trainer state (not written by modmimic.train); "
                              "it can be loaded as a policy but not resumed")

    if not resume:
        check_dir_creatable(cfg.train.output_dir, "train.output_dir")
    seed_everything(int(cfg.train.seed))
    try:
        data = distributed.build_data_shared(build_data, cfg, device, group)
    except DatasetError as e:
        raise obs_key_hint(e, cfg, dataset_entry(cfg)["path"] or default_dataset_path()) from None
    # a resumed run's config was read back from its run directory: its callables resolve only in trusted modules
    with trusting(stored_config_modules() if resume else None):
        algo = algo_factory(cfg.algo_name, cfg, data.obs_shapes, data.ac_dim, device)
    if cfg.get("online") is not None:  # offline-to-online fine-tuning: batches mix in environment interaction
        from modmimic.online import attach

        data = attach(data, algo, cfg, group)
    n_train, n_valid, n_valid_sets = epoch_lengths(cfg, data)
    num_epochs, stop_after = int(cfg.train.num_epochs), cfg.train.get("stop_after_epoch")
    last_epoch = num_epochs if stop_after is None else min(num_epochs, int(stop_after))

    # state that a resume restores
    start_epoch, global_step, done_steps = 1, 0, 0  # done_steps: of start_epoch, saved by a stop signal mid-epoch
    best = {"valid_loss": math.inf, "success_rate": -math.inf, "return": -math.inf}
    if resume:
        start_epoch, global_step, best, done_steps = restore_run(algo, data, ckpt, os.path.join(run_dir, RUN_MARKER))
        note = distributed.restore_rank_rng(ckpt["trainer_state"], group, int(cfg.train.seed), set_rng_state,
                                            seed_everything)
        if note and group.is_main:
            warnings.warn(note, stacklevel=2)
        del ckpt
    else:
        if cfg.experiment.ckpt_path:  # robomimic: start from a checkpoint's weights (ignored when resuming)
            init_path = os.path.abspath(os.path.expanduser(str(cfg.experiment.ckpt_path)))
            init = load_checkpoint(init_path)
            model = init["model"]
            check_weights(algo, model.get("nets", model), f"experiment.ckpt_path={init_path}")
            algo.deserialize(model, load_optimizers=False)
            del init
        run_dir = group.broadcast_object(make_run_dir(cfg) if group.is_main else None)
        if group.is_main:
            locks.append(RunLock(run_dir).acquire())
            locks[-1].created = True  # a stop before the first checkpoint removes it
        if group.rank > 0:  # every rank its own stream of loss noise (rank 0 keeps the single-process one)
            seed_everything(distributed.rank_seed(int(cfg.train.seed), group.rank))
    distributed.attach(algo, group)  # identical start (rank 0's state), gradients averaged per update
    distributed.shard_data(data, group)
    if device.type == "cuda" and cfg.train.get("store_on_device", True):
        for sampler in (data.train_sampler, data.valid_sampler):
            if sampler is not None:
                sampler.keep_on_device()
    models_dir = os.path.join(run_dir, "models")
    last_path = os.path.join(models_dir, "last.pth")
    result = {"run_dir": run_dir, "epoch": start_epoch - 1, "global_step": global_step,
              "best_valid_loss": best["valid_loss"], "best_success_rate": best["success_rate"], "metrics": {}}
    if start_epoch > last_epoch:
        print(f"modmimic.train: {run_dir} already finished epoch {start_epoch - 1} (train.num_epochs={num_epochs}"
              f"{'' if stop_after is None else f', train.stop_after_epoch={stop_after}'}); nothing to do")
        return result
    if group.is_main:
        _remove_stale_temps(models_dir)
        save_config_yaml(algo.config, os.path.join(run_dir, "config.yaml"), recipe_sources(algo.config))

    log_cfg = cfg.experiment.logging
    log_txt = os.path.join(run_dir, "logs", "log.txt") if log_cfg.terminal_output_to_txt and group.is_main else None
    if group.is_main:
        wandb_run = start_wandb(cfg, run_dir) if log_cfg.log_wandb else None
        logger = RunLogger(os.path.join(run_dir, "logs"), log_tb=bool(log_cfg.log_tb), start_epoch=start_epoch,
                           wandb_run=wandb_run)
    else:
        logger = distributed.NullLogger()
        progress = False
    save_cfg = cfg.experiment.save
    rollout_fn, why = setup_rollouts(cfg, rollout_fn, progress, group, data.env_meta, start_epoch, last_epoch)

    def save(names: list, epoch: int, global_step: int, epoch_step: int) -> None:
        """Checkpoints ``names`` of the state after ``epoch`` whole epochs and ``epoch_step`` steps of the next."""
        trainer_state = {"rng": rng_state(),
                         "samplers": {"train": data.train_sampler.state_dict(),
                                      "valid": data.valid_sampler.state_dict()
                                      if data.valid_sampler is not None else None},
                         "config": OmegaConf.to_container(algo.config, resolve=False)}
        if group.active:  # every rank's RNG (the samplers' state is the same on every rank)
            trainer_state.update(rng_ranks=group.all_gather_object(trainer_state["rng"]), world_size=group.world)
        if group.is_main:
            ckpt = make_checkpoint(
                algo, data.obs_normalization_stats, data.action_normalization_stats, data.env_meta,
                variable_state={"epoch": epoch, "epoch_step": epoch_step, "global_step": global_step,
                                "best_valid_loss": best["valid_loss"], "best_return": best["return"],
                                "best_success_rate": best["success_rate"]},
                trainer_state=trainer_state, action_keys=list(cfg.train.action_keys))
            ckpt["recipe_sources"] = recipe_sources(algo.config)
            for name in dict.fromkeys(names):  # last.pth last: it marks the run as resumable from this state
                write_checkpoint(os.path.join(models_dir, name), ckpt)
            del ckpt
        group.barrier()  # no rank runs ahead of a checkpoint that is being written

    policy = None
    last_save_time = time.time()
    seconds = {"train": 0.0, "valid": 0.0, "rollout": 0.0}
    final_rollout = best_rollout = None
    try:
        with tee_stdout(log_txt), distributed.silenced(not group.is_main):
            print(f"modmimic.train: recipe {cfg.recipe_name} on {data.describe()}; "
                  f"run directory {run_dir}" + (f"; resuming at epoch {start_epoch}" if resume else ""))
            print("modmimic.train: " + rollout_plan(cfg, rollout_fn, why, start_epoch, last_epoch,
                                                    getattr(rollout_fn, "env_name", None)), flush=True)
            note = preset_note(cfg)
            if note:
                print(f"modmimic.train: {note}", flush=True)
            if os.path.exists(last_path) and not group.active:
                signals.graceful = True  # a stop signal now finishes the step and saves a resumable checkpoint
            for epoch in range(start_epoch, last_epoch + 1):
                desc = f"epoch {epoch}/{num_epochs}"
                skip, done_steps = done_steps, 0
                try:
                    train_m = run_epoch(algo, data.train_sampler, n_train - skip, epoch, validate=False,
                                        progress=progress, desc=f"{desc} train", should_stop=signals.requested)
                    train_m = group.mean_metrics(train_m)
                except NonFiniteLossError as e:
                    good = (f"the last good checkpoint is {last_path} (epoch {epoch - 1})" if os.path.exists(last_path)
                            else "no checkpoint was written yet")
                    raise NonFiniteLossError(f"{e}; training stopped, {good}") from None
                steps = int(train_m.pop("Steps_Done"))
                global_step += steps
                if skip + steps < n_train:  # a stop signal came mid-epoch: save where it stands, then stop
                    save(["last.pth"], epoch - 1, global_step, skip + steps)
                    raise signals.stopped(last_path, epoch, skip + steps, n_train)
                epoch_seconds = {"train": 60 * train_m["Time_Epoch"], "valid": 0.0, "rollout": 0.0}
                algo.on_epoch_end(epoch)
                scalars = namespaced("Train", train_m)
                scalars.update(sampler_scalars(data.train_sampler))
                if data.valid_sampler is not None:
                    valid_scalars, epoch_seconds["valid"] = validate_epoch(algo, data, n_valid, n_valid_sets, epoch,
                                                                           group, progress, desc)
                    scalars.update(valid_scalars)
                rollout = None
                if rollout_fn is not None and rollout_due(cfg, epoch):
                    if policy is None:
                        policy = RolloutPolicy(algo, data.obs_normalization_stats, data.action_normalization_stats,
                                               *action_settings(cfg.train))
                    algo.set_eval()
                    t_rollout = time.perf_counter()
                    try:
                        rollout = rollout_fn(policy, epoch, cfg, data.env_meta, run_dir=run_dir)
                    except ImportError as e:  # a simulator is not installed: train on without rollouts
                        warnings.warn(f"rollouts are skipped for the rest of this run: {e}", stacklevel=2)
                        rollout_fn = None
                    algo.set_train()
                    epoch_seconds["rollout"] = time.perf_counter() - t_rollout
                    scalars.update(rollout_scalars(rollout or {}))
                    scalars["Timing_Stats/Rollout"] = epoch_seconds["rollout"] / 60
                    if rollout:
                        final_rollout = (epoch, rollout)
                scalars["System/RAM Usage (MB)"] = _ram_mb()

                names, best, new_best_rollout, periodic = checkpoint_names(
                    save_cfg, epoch, scalars.get("Valid/Loss"), rollout, best, time.time() - last_save_time)
                if new_best_rollout:
                    best_rollout = (epoch, rollout)
                if periodic:
                    last_save_time = time.time()

                logger.record(epoch, scalars, step=global_step)
                for env_name, path in (getattr(rollout_fn, "videos", None) or {}).items() if rollout else ():
                    logger.log_video(f"Rollout/Video/{env_name}", path, epoch)
                save(names + ["last.pth"], epoch, global_step, 0)
                if not group.active:
                    signals.graceful = True

                print(epoch_line(epoch, num_epochs, scalars, rollout, epoch_seconds), flush=True)
                for k, v in epoch_seconds.items():
                    seconds[k] += v
                result.update(epoch=epoch, global_step=global_step, best_valid_loss=best["valid_loss"],
                              best_success_rate=best["success_rate"], metrics=scalars)
                if signals.requested():  # came during validation, rollouts or the checkpoint: it is saved
                    raise signals.stopped(last_path, epoch, n_train, n_train)
            best_paths = {what: os.path.join(models_dir, name) for what, name in
                          (("best validation checkpoint", "best_validation.pth"),
                           ("best rollout success checkpoint", "best_rollout_success.pth"),
                           ("last checkpoint", "last.pth")) if os.path.exists(os.path.join(models_dir, name))}
            result["summary"] = run_summary(run_dir, best_paths, final_rollout, best_rollout, seconds,
                                            time.perf_counter() - t_start)
            print(result["summary"], flush=True)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) and not resume and group.is_main and \
                discard_unfinished_run(run_dir, logger):
            e.modmimic_discarded_run_dir = run_dir  # the CLI says so instead of pointing at an empty folder
            raise
        # keep the whole traceback next to the run's logs; the CLI prints a one-paragraph summary
        try:
            with open_append(run_dir, os.path.join(run_dir, "logs", "error.txt")) as f:
                traceback.print_exc(file=f)
            e.modmimic_run_dir = run_dir
        except (OSError, AttributeError, RunDirError):
            pass
        raise
    finally:
        logger.close()
        if hasattr(rollout_fn, "close"):
            rollout_fn.close()
        if hasattr(data.train_sampler, "close"):  # online fine-tuning: its environments
            data.train_sampler.close()
        group.close()
    return result
