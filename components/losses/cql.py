"""CQL pieces (robomimic ``cql.py``, Kumar et al. 2020): SAC actor, entropy temperature, conservative penalty.

The penalty is the paper's CQL(H) with importance sampling, as robomimic and the authors' code compute it: for each
state ``s``, a log-sum-exp over ``3N`` candidate actions — ``N`` uniform in ``[-1, 1]^A``, ``N`` from ``pi(s)`` and
``N`` from ``pi(s')`` — **all scored at s**, each corrected by its log-density, minus ``Q`` of the data action.
(torchrl's ``CQLLoss`` takes the log-sum-exp over 3 values per sample and scores the ``pi(s')`` actions at ``s'``:
a different number; see reference/torchrl-notes.md §1.4.)

Gradient routing follows robomimic's separate optimizer steps, expressed so that one backward of the summed losses
of an update gives the same gradients: the actor loss uses a detached ``alpha``; the penalty uses a detached CQL
weight for the critics and detached gaps for the weight's own (Lagrange) loss.
"""
from __future__ import annotations

import math

import torch

from modmimic import keys as K
from modmimic.keys import declare
from modmimic.components.batching import next_state
from modmimic.keys import declare

ACTOR_LOG_PROB = "actor_log_prob"
CQL_WEIGHT_MAX = 1.0e6


@declare(reads=[K.ACTION], writes=["{keep_log_prob}"], needs={"policy": ("rsample_with_log_prob", "log_prob")}, context=("step",))
def sac_actor(batch, policy, critic, log_alpha, bc_start_steps: int = 0, step: int = 0,
              keep_log_prob: str = ACTOR_LOG_PROB) -> dict:
    """``mean(alpha * log pi(a~|s) - min_i Q_i(s, a~))`` with ``a~ ~ pi(s)`` reparameterised; for the first
    ``bc_start_steps`` steps the Q term is ``log pi(a_data|s)`` instead. Returns the detached ``log pi(a~|s)`` under
    ``keep_log_prob`` (a declared write) for :func:`entropy_temperature` of the same update."""
    dist = policy(batch)
    a, log_prob = dist.rsample_with_log_prob()
    alpha = log_alpha().exp().detach()
    if step < bc_start_steps:
        baseline = dist.log_prob(batch.get(K.ACTION))
    else:
        baseline = critic(batch, a).min(0).values[..., 0]
    loss = (alpha * log_prob - baseline).mean()
    return {"loss": loss, "log_prob": log_prob.detach().mean(), "entropy_weight": alpha,
            keep_log_prob: log_prob.detach()}


@declare(reads=[K.ACTION, "{log_prob_key}"])
def entropy_temperature(batch, log_alpha, target_entropy="default", log_prob_key: str = ACTOR_LOG_PROB) -> dict:
    """``-mean(log_alpha * (log pi + target_entropy))`` (``"default"``: ``-|A|``). ``target_entropy=None`` keeps
    ``alpha`` fixed at ``exp(log_alpha)`` (robomimic: 1) and the loss is zero."""
    la = log_alpha()
    if target_entropy is None:
        return {"loss": la.detach() * 0.0, "entropy_weight": la.detach().exp()}
    if target_entropy == "default":
        target_entropy = -float(batch.get(K.ACTION).shape[-1])
    loss = -(la * (batch.get(log_prob_key) + float(target_entropy))).mean()
    return {"loss": loss, "entropy_weight": la.detach().exp()}


def cql_candidates(batch, policy, num_random_actions: int = 10):
    """No-grad candidate actions ``[B, 3N, A]`` and their log-densities ``[B, 3N]``: uniform (density ``0.5^A``),
    ``pi(s)`` and ``pi(s')`` samples (robomimic detaches the log-densities; the actions' gradients never reach a
    stepped parameter, so they are sampled without a graph)."""
    act = batch.get(K.ACTION)
    B, A = act.shape[0], act.shape[-1]
    N = num_random_actions
    with torch.no_grad():
        rand = torch.empty(B, N, A, device=act.device, dtype=act.dtype).uniform_(-1.0, 1.0)
        curr, curr_lp = policy(batch).rsample_with_log_prob((N,))  # [N, B, A], [N, B]
        nxt, nxt_lp = policy(next_state(batch)).rsample_with_log_prob((N,))
        actions = torch.cat([rand, curr.transpose(0, 1), nxt.transpose(0, 1)], 1)
        rand_lp = torch.full((B, N), A * math.log(0.5), device=act.device, dtype=act.dtype)
        log_density = torch.cat([rand_lp, curr_lp.transpose(0, 1), nxt_lp.transpose(0, 1)], 1)
    return actions, log_density


def cql_gap(q_candidates: torch.Tensor, log_density: torch.Tensor, q_data: torch.Tensor,
            min_q_weight: float = 1.0) -> torch.Tensor:
    """Per critic: ``min_q_weight * (mean_B logsumexp_j (Q(s, a_j) - log p(a_j)) - mean_B Q(s, a))``.
    ``q_candidates`` ``[N, B, M]``, ``log_density`` ``[B, M]``, ``q_data`` ``[N, B, 1]`` -> ``[N]``."""
    lse = torch.logsumexp(q_candidates - log_density, dim=-1).mean(-1)
    return min_q_weight * (lse - q_data.mean((1, 2)))


def calibrate(q_candidates: torch.Tensor, lower_bound: torch.Tensor, num_random_actions: int) -> torch.Tensor:
    """Cal-QL (Nakamoto et al. 2023): the policy candidates' values (all but the first ``num_random_actions``
    uniform ones) raised to at least the reference value of their state, ``max(Q(s, a~pi), V_ref(s))``.
    ``q_candidates`` ``[N, B, M]``, ``lower_bound`` ``[B, 1]`` (the data's Monte-Carlo return-to-go)."""
    n = int(num_random_actions)
    return torch.cat([q_candidates[..., :n], torch.maximum(q_candidates[..., n:], lower_bound)], dim=-1)


@declare(reads=[K.ACTION, (K.NEXT, K.OBS), "{pred_key}", "{lower_bound_key}"],
         needs={"policy": ("rsample_with_log_prob",)})
def cql_penalty(batch, critic, policy, log_weight, num_random_actions: int = 10, min_q_weight: float = 1.0,
                target_q_gap: float | None = 5.0, cql_weight: float = 1.0, pred_key: str | None = None,
                lower_bound_key: str | None = None, importance_sampling: bool = True) -> dict:
    """Sum over critics of ``w * (gap_i - target_q_gap)``.

    * Lagrange (``target_q_gap >= 0``): ``w = clamp(exp(log_weight), 0, 1e6)``; the loss also carries the weight's
      dual loss ``-mean_i w * (gap_i - target_q_gap)`` (its gradient reaches only ``log_weight``).
    * fixed (``target_q_gap`` None or < 0): ``w = cql_weight``, no gap target.

    ``pred_key`` names the data-action predictions ``[B, N, 1]`` a TD loss of the same update kept
    (``td_loss(keep_pred=...)``); without it they are computed here. ``lower_bound_key`` (Cal-QL): the policy
    candidates' Q values are bounded below by ``batch[lower_bound_key]`` (:func:`calibrate`) before the
    log-sum-exp, so the penalty stops pushing them under the data's return. ``importance_sampling=False`` drops the
    log-density correction (the paper's CQL(H) over the candidates' values alone, ``log p(a_j) = 0``), so a narrow
    policy's own samples are pushed down as much as the uniform ones."""
    actions, log_density = cql_candidates(batch, policy, num_random_actions)
    q_cand = critic(batch, actions)[..., 0]  # [N, B, 3n]
    bounded = None
    if lower_bound_key is not None:
        bound = batch.get(K.as_key(lower_bound_key))
        bounded = (q_cand[..., num_random_actions:] < bound).float().mean().detach()
        q_cand = calibrate(q_cand, bound, num_random_actions)
    q_data = batch.get(pred_key).movedim(1, 0) if pred_key is not None else critic(batch, batch.get(K.ACTION))
    if not importance_sampling:
        log_density = torch.zeros_like(log_density)
    gap = cql_gap(q_cand, log_density, q_data, min_q_weight)
    lagrange = target_q_gap is not None and target_q_gap >= 0
    if lagrange:
        w = log_weight().exp().clamp(0.0, CQL_WEIGHT_MAX)
        penalty = w.detach() * (gap - target_q_gap)
        weight_loss = -(w * (gap.detach() - target_q_gap)).mean()
        loss = penalty.sum() + weight_loss
    else:
        w = torch.as_tensor(float(cql_weight))
        penalty = w * gap
        weight_loss = torch.zeros(())
        loss = penalty.sum()
    out = {"loss": loss, "penalty": penalty.detach().sum(), "gap": gap.detach().mean(), "cql_weight": w.detach(),
           "weight_loss": weight_loss.detach()}
    if bounded is not None:
        out["bounded_fraction"] = bounded
    return out
