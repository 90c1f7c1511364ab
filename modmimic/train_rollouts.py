"""Environment rollouts during training: the rollout hook, when rollouts are due, the start-up line that says so,
and how their results are logged.

A rollout function is called at the epochs :func:`rollout_due` picks, with the policy in eval mode::

    rollout_fn(policy: RolloutPolicy, epoch: int, cfg, env_meta: dict, run_dir: str)
        -> {env name: {"Success_Rate": ..., "Return": ..., "Horizon": ..., "Time_Episode": ...}} or None

Metrics are logged as ``Rollout/<metric>/<env>`` (``Time_*`` as ``Timing_Stats/Rollout_<env>_*``); a new best mean
success rate saves ``models/best_rollout_success.pth``. If it raises ImportError (a simulator is not installed), the
run warns once and goes on without rollouts. ``close()`` is called at the end when the function has one.
"""
from __future__ import annotations

import warnings

from omegaconf import DictConfig

from modmimic import distributed
from modmimic.data.hdf5 import DatasetError


def no_rollouts(policy, epoch: int, cfg: DictConfig, env_meta: dict, run_dir: str | None = None):
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
