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
from omegaconf import DictConfig, OmegaConf

from modmimic import distributed
from modmimic.algo import Algo, NonFiniteLossError, algo_factory
from modmimic.config import ConfigError, save_config_yaml
from modmimic.data.build import TrainData, action_settings, build_data, check_action_bounds, sampler_seed  # noqa: F401
from modmimic.data.default import default_dataset_path
from modmimic.data.hdf5 import DatasetError
from modmimic.data.sampler import WindowSampler
from modmimic.train_rollouts import rollout_due, rollout_plan, rollout_scalars, setup_rollouts  # noqa: F401
from modmimic.dataset import dataset_entry, with_data
from modmimic.logger import (RUN_MARKER, RunLogger, check_dir_creatable, find_run_dir, make_run_dir, start_wandb,
                             tee_stdout)
from modmimic.package import check_package
from modmimic.policy import CheckpointError, RolloutPolicy, check_weights, load_checkpoint, make_checkpoint
from modmimic.checkpointing import _remove_stale_temps, checkpoint_names, recipe_sources, write_checkpoint
from modmimic.resume import resume_config, restore_run, rng_state, set_rng_state  # noqa: F401  (re-exported)
from modmimic.rundir import RunDirError, RunLock, RunStopped, StopSignals, check_run_tree, open_append  # noqa: F401
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


def _ram_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


# --- the loop -------------------------------------------------------------------------------------------------

def train(cfg: DictConfig, rollout_fn="auto", progress=None) -> dict:
    """Train ``cfg`` (a composed config, see :func:`modmimic.config.compose`); with ``cfg.resume`` continue the run
    in ``cfg.resume_dir`` (or the one :func:`find_run_dir` finds). ``rollout_fn``: see :mod:`modmimic.train_rollouts`
    ("auto": :func:`~modmimic.train_rollouts.default_rollout_fn`; None: no rollouts). ``progress``: tqdm bars (None: when stderr is a
    terminal). Returns ``{"run_dir", "epoch", "global_step", "best_valid_loss", "best_success_rate", "metrics"}``
    (``metrics``: the last epoch's scalars).

    The run directory is locked for the whole call (:class:`modmimic.rundir.RunLock`); SIGTERM and SIGUSR1 stop
    the run as Ctrl-C does, and once a checkpoint exists they first finish the current step and save a resumable
    ``last.pth`` (:class:`StopSignals`)."""
    locks: list = []  # the run directory's lock, and the directory when this call created it
    with StopSignals() as signals:
        try:
            return _train(cfg, rollout_fn, progress, locks, signals)
        except BaseException as e:  # Ctrl-C or a stop signal before the loop's own handler was in place
            if not isinstance(e, KeyboardInterrupt):
                if signals.raised is None:
                    raise
                # the signal interrupted library code whose clean-up raised something else (omegaconf: an
                # AttributeError from a half-updated node): the run still ended by the signal
                stop = RunStopped(signals.raised)
                stop.__cause__ = e
                e = stop
            new = [lock.run_dir for lock in locks if getattr(lock, "created", False)]
            if new and not getattr(e, "modmimic_discarded_run_dir", None) and \
                    not os.path.exists(os.path.join(new[0], RUN_MARKER)):
                shutil.rmtree(new[0], ignore_errors=True)
                e.modmimic_discarded_run_dir = new[0]
            raise e
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
        algo = algo_factory(cfg.algo_name, cfg, data.obs_shapes, data.ac_dim, device, task_dim=data.task_dim)
    for store in data.train_stores or [data.train_store]:
        check_action_bounds(algo.nets, store, action_settings(cfg.train)[1])
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
        with signals.held():  # a stop between creating the directory and registering it would leave it behind
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
                trainer_state=trainer_state, action_keys=list(cfg.train.action_keys), task_vocab=data.task_vocab)
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
                    signals.check_raised()  # unless it came before the first checkpoint: nothing to save then
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
                                               *action_settings(cfg.train), task_vocab=data.task_vocab)
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
                    signals.check_raised()
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
