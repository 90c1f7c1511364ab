"""The batch contract: every TensorDict key modmimic reads or writes.

Keys follow torchrl's conventions so that torchrl losses, value estimators and samplers work on modmimic batches
without remapping:

    ("observation", <obs key>)              current observation, one entry per robomimic obs key
    "action"                                action taken at the current step
    ("next", "observation", <obs key>)      observation after the action (robomimic ``next_obs``)
    ("next", "reward")                      reward of the transition, trailing dim 1
    ("next", "done"), ("next", "terminated") robomimic ``dones``, bool, trailing dim 1
    ("goal", <obs key>)                     goal observation (robomimic ``goal_obs``), no time dimension
    ("subgoal", <obs key>)                  subgoal targets of hierarchical recipes
    ("collector", "mask")                   True where a sequence step is real data, False where it is padding
    "is_init"                               True on the first step of a demonstration
    "loss_mask"                             optional: the steps losses average over (all when absent)
    "index"                                 global index of the window's start (robomimic ``index``)
    "episode"                               demonstration number (position in the ordered demo list)
    "mc_return"                             Monte-Carlo return-to-go of the step within its demo, trailing dim 1
                                            (recipes that require ``mc_returns``: Cal-QL)
    ("task", "id")                          multi-task training: the episode's task number in the run's task
                                            vocabulary (int64)
    ("task", "embedding")                   multi-task training: the task's embedding, float ``[..., D]`` (a
                                            one-hot of the id, or a text encoder's embedding of the instruction)

Sequence batches are ``[B, T]``; single-step batches are ``[B]``.
"""
from __future__ import annotations

import re

OBS = "observation"
NEXT = "next"
ACTION = "action"
REWARD = (NEXT, "reward")
DONE = (NEXT, "done")
TERMINATED = (NEXT, "terminated")
GOAL = "goal"
SUBGOAL = "subgoal"
MASK = ("collector", "mask")
IS_INIT = "is_init"
LOSS_MASK = "loss_mask"  # optional [B, T] bool: the steps a loss averages over (e.g. the transformer's last step)
INDEX = "index"
EPISODE = "episode"
MC_RETURN = "mc_return"
TASK = "task"
TASK_ID = (TASK, "id")
TASK_EMB = (TASK, "embedding")


def obs(key: str) -> tuple:
    """Nested key of one observation entry."""
    return (OBS, key)


def next_obs(key: str) -> tuple:
    """Nested key of one next-observation entry."""
    return (NEXT, OBS, key)


def goal(key: str) -> tuple:
    return (GOAL, key)


def subgoal(key: str) -> tuple:
    return (SUBGOAL, key)


# robomimic's collated batch dict names -> modmimic groups (used to accept robomimic-style batches).
ROBOMIMIC_GROUPS = {"obs": (OBS,), "next_obs": (NEXT, OBS), "goal_obs": (GOAL,)}


# --- declared keys ---------------------------------------------------------------------------------------------
#
# Every function a recipe names (batch functions, prepare steps, losses) declares what it reads from the batch and
# what it produces. The recipe compiler checks, before anything runs, that every key a step reads is produced by the
# data or by an earlier step, and warns about keys produced and never read. A function never writes into the batch:
# a prepare step returns ``{key: value}`` for its declared ``writes``; a loss returns ``{"loss": scalar, <metric>:
# detached scalar, ...}`` and, for a later loss of the same update, values under its declared ``writes`` (the engine
# puts those into the step's batch).
#
# Entries are keys (``"action"``, ``("next", "reward")`` or the dotted ``"next.reward"``) or ``"{arg}"``: the key
# is the value of the function's keyword argument ``arg`` as the recipe binds it (skipped when that value is None).
# ``needs``: ``{net argument: (operation, ...)}`` a network must support (distribution heads: ``"log_prob"``,
# ``"rsample"``, ``"sample"``, ``"mode"``, ``"rsample_with_log_prob"``), checked when the recipe is built.
# ``context``: the run-time counters the function takes as keyword arguments (``"epoch"``, ``"step"``).

def as_key(k):
    """``"next.reward"`` -> ``("next", "reward")``; a plain name or a tuple as is."""
    if isinstance(k, str) and "." in k:
        return tuple(k.split("."))
    if isinstance(k, list):
        return tuple(k)
    return k


def declare(reads=(), writes=(), needs=None, context=()):
    """Decorator declaring a step function's batch keys (see above). Sets ``fn.reads``, ``fn.writes``,
    ``fn.needs`` and ``fn.context``."""

    def wrap(fn):
        fn.reads, fn.writes = tuple(reads), tuple(writes)
        fn.needs = {k: tuple(v) for k, v in (needs or {}).items()}
        fn.context = tuple(context)
        return fn

    return wrap


def bound_keys(entries, kwargs: dict) -> list:
    """Declared entries resolved against the bound keyword arguments: a string with ``{arg}`` fields is formatted
    with them (dropped when a named argument is None or absent), then split at dots (:func:`as_key`)."""
    out = []
    for e in entries:
        if isinstance(e, str) and "{" in e:
            names = re.findall(r"\{(\w+)\}", e)
            if any(kwargs.get(n) is None for n in names):
                continue
            e = e.format(**{n: kwargs[n] for n in names})
        out.append(as_key(e))
    return out
