"""IQL pieces (robomimic ``iql.py``): the expectile value and the advantage-weighted actor.

Shared quantities of one step, computed once before the updates (recipe ``prepare``):

* ``q_target``   = ``r + (1 - done) * gamma * V(s')`` (:func:`~modmimic.components.losses.critic.value_target`);
* ``q_data_min`` = ``min_i Q'_i(s, a)`` of the target critics (:func:`min_target_q`).

:func:`awr_actor` reads ``V(s)`` from before the value step, as in robomimic (which computes every loss first): the
value loss keeps the ``V(s)`` it computes (``expectile_value(keep_value="value_pred")``, detached), or a prepare step
computes it (:func:`value_prediction`, one more forward pass).
"""
from __future__ import annotations

import torch

from modmimic import keys as K
from modmimic.keys import declare

Q_DATA_MIN = "q_data_min"
VALUE_PRED = "value_pred"


@declare(reads=[K.ACTION], writes=[Q_DATA_MIN])
def min_target_q(batch, critic) -> dict:
    """``{q_data_min: min_i Q'_i(s, a)}`` for the data actions (prepare)."""
    return {Q_DATA_MIN: critic(batch, batch.get(K.ACTION)).min(0).values}


def expectile_weights(err: torch.Tensor, quantile: float) -> torch.Tensor:
    """robomimic: ``quantile`` where ``err = V - q <= 0`` (V under the target), else ``1 - quantile``."""
    return torch.where(err > 0, 1.0 - quantile, quantile)


@declare(writes=[VALUE_PRED])
def value_prediction(batch, value) -> dict:
    """``{value_pred: V(s)}`` (prepare: the value before this step's value update)."""
    return {VALUE_PRED: value(batch)}


@declare(reads=["{q_key}"], writes=["{keep_value}"])
def expectile_value(batch, value, quantile: float = 0.9, q_key: str = Q_DATA_MIN, keep_value: str | None = None) -> dict:
    """Expectile regression of ``V(s)`` onto ``q_key``: ``mean(w * (V - q)^2)``. ``keep_value`` also returns the
    detached ``V(s)`` under that key (a declared write), for the actor's advantage."""
    v = value(batch)
    err = v - batch.get(q_key)
    loss = (expectile_weights(err, quantile) * err.pow(2)).mean()
    out = {"loss": loss, "v_pred": v.detach().mean()}
    if keep_value is not None:
        out[keep_value] = v.detach()
    return out


def awr_weights(adv: torch.Tensor, beta: float = 1.0, clip_adv_value: float | None = None,
                use_final_clip: bool = True, filter_type: str = "exp") -> torch.Tensor:
    """``exp(min(adv, clip_adv_value) / beta)``, clamped to ``[-100, 100]`` with ``use_final_clip`` (robomimic)."""
    if filter_type != "exp":
        raise ValueError(f"adv.filter_type {filter_type!r} is not implemented (robomimic implements only 'exp')")
    if clip_adv_value is not None:
        adv = adv.clamp(max=clip_adv_value)
    w = torch.exp(adv / beta)
    return w.clamp(-100.0, 100.0) if use_final_clip else w


@declare(reads=[K.ACTION, "{q_key}", "{value_key}"], needs={"policy": ("log_prob",)})
def awr_actor(batch, policy, beta: float = 1.0, clip_adv_value: float | None = None, use_final_clip: bool = True,
              filter_type: str = "exp", q_key: str = Q_DATA_MIN, value_key: str = VALUE_PRED) -> dict:
    """Advantage-weighted regression: ``mean(-log pi(a|s) * w(q - V))`` with detached weights."""
    adv = (batch.get(q_key) - batch.get(value_key))[..., 0]
    w = awr_weights(adv, beta, clip_adv_value, use_final_clip, filter_type).detach()
    log_prob = policy(batch).log_prob(batch.get(K.ACTION))
    loss = -(log_prob * w).mean()
    return {"loss": loss, "log_prob": log_prob.detach().mean(), "adv": adv.mean(), "adv_weight": w.mean()}
