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

Sequence batches are ``[B, T]``; single-step batches are ``[B]``.
"""
from __future__ import annotations

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
