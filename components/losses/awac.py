"""AWAC (Nair et al. 2020, "Accelerating Online Reinforcement Learning with Offline Datasets").

The critic is a TD ensemble on the actor's next action (:func:`~modmimic.components.losses.critic.policy_target`,
:func:`~modmimic.components.losses.critic.td_loss`); the actor is advantage-weighted regression onto the data
actions (:func:`~modmimic.components.losses.iql.awr_actor`). What AWAC adds is where the advantage comes from:

    A(s, a) = min_i Q_i(s, a) - V(s),    V(s) = mean_k min_i Q_i(s, a_k),  a_k ~ pi(s)

computed once per step, under no grad, before the updates (:func:`advantage`), and the actor's weights
``min(exp(A / beta), max_weight)`` (:func:`awac_actor`).
"""
from __future__ import annotations

import math

from modmimic import keys as K
from modmimic.keys import declare
from modmimic.components.losses.iql import Q_DATA_MIN, awr_actor

V_PI = "v_pi"


@declare(reads=[K.OBS, K.ACTION], writes=[Q_DATA_MIN, V_PI], needs={"policy": ("sample",)})
def advantage(batch, policy, critic, num_action_samples: int = 1) -> dict:
    """Prepare: ``{q_data_min: min_i Q_i(s, a), v_pi: mean over num_action_samples of min_i Q_i(s, a' ~ pi(s))}``,
    both ``[B, 1]``; ``awr_actor`` takes their difference as the advantage."""
    if num_action_samples < 1:
        raise ValueError(f"algo.adv.num_action_samples must be >= 1, got {num_action_samples}")
    q_data = critic(batch, batch.get(K.ACTION)).min(0).values
    a = policy(batch).sample((num_action_samples,)).transpose(0, 1)  # [B, n, A]
    v = critic(batch, a).min(0).values.mean(-2)  # [N, B, n, 1] -> [B, 1]
    return {Q_DATA_MIN: q_data, V_PI: v}


@declare(reads=[K.OBS, K.ACTION, "{q_key}", "{value_key}"], needs={"policy": ("log_prob",)})
def awac_actor(batch, policy, beta: float = 1.0, max_weight: float | None = 20.0, q_key: str = Q_DATA_MIN,
               value_key: str = V_PI) -> dict:
    """``mean(-min(exp(A / beta), max_weight) * log pi(a|s))`` with ``A = q_key - value_key`` (detached weights).

    :func:`awr_actor` with its advantage clipped at ``beta * log(max_weight)``, which is the weight clip exactly:
    ``exp(min(A, beta log M) / beta) = min(exp(A / beta), M)``. No other clip (``max_weight=None``: none at all)."""
    if beta <= 0:
        raise ValueError(f"algo.adv.beta must be > 0, got {beta}")
    if max_weight is not None and max_weight <= 0:
        raise ValueError(f"algo.adv.max_weight must be > 0 (or null for no clip), got {max_weight}")
    clip = None if max_weight is None else beta * math.log(max_weight)
    return awr_actor(batch, policy, beta=beta, clip_adv_value=clip, use_final_clip=False, q_key=q_key,
                     value_key=value_key)
