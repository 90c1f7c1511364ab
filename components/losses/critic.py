"""TD critics: bootstrapped targets (computed once per step, under no_grad) and the regression losses.

A target is ``y = r + (1 - done) * gamma * v(s')`` (:func:`bootstrap`); the recipes differ only in ``v(s')``:

* :func:`value_target`          ``V(s')`` of a state-value network (IQL);
* :func:`policy_target`         ``Q'(s', a' ~ pi(s'))`` of a stochastic policy, optionally the max over several
                                samples and the soft (entropy) backup (CQL);
* :func:`actor_target`          ``Q'(s', clip(mu'(s') + clipped noise))`` of a deterministic target actor (TD3-BC);
* ``bcq.sampler_target``        the max over actions drawn from the behaviour model (BCQ).

Each is a "prepare" function: ``fn(batch, <nets>, **hparams) -> {"q_target": [B, 1]}``, run by the Algo under
no_grad at the start of a step (or right before the update that needs it), and read by :func:`td_loss`. Ensembles
combine through :func:`mix_ensemble` (``weight * min + (1 - weight) * max``; ``weight = 1`` is the TD3 min).

The discount is the batch's ``("next", "discount")`` (``gamma ** n_step``, written by
:func:`~modmimic.components.batching.n_step_transition`); batches without it need ``discount=``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from modmimic import keys as K
from modmimic.keys import declare
from modmimic.components.batching import DISCOUNT, next_state
from modmimic.keys import declare

Q_TARGET = "q_target"


def mix_ensemble(qs: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight * min + (1 - weight) * max`` over the ensemble dim 0 (robomimic ``critic.ensemble.weight``)."""
    lo = qs.min(0).values
    if weight == 1.0:
        return lo
    return weight * lo + (1.0 - weight) * qs.max(0).values


def bootstrap(batch, next_value: torch.Tensor, discount: float | None = None) -> torch.Tensor:
    """``r + (1 - done) * gamma * next_value`` (all ``[B, 1]``)."""
    nxt = batch.get(K.NEXT)
    gamma = nxt.get(DISCOUNT[1], None)
    if gamma is None:
        if discount is None:
            raise ValueError("the batch has no ('next', 'discount') (use the n_step_transition batch) and no "
                             "discount was given")
        gamma = discount
    not_done = 1.0 - nxt.get("done").to(next_value.dtype)
    return nxt.get("reward") + not_done * gamma * next_value


def next_q_value(critic, state, actions: torch.Tensor, ensemble_weight: float = 1.0,
                 max_over_samples_first: bool = False) -> torch.Tensor:
    """Value of ``state`` from a (target) critic and next actions ``[B, A]`` or candidates ``[B, n, A]`` -> ``[B, 1]``.

    Candidates are reduced by a max: after mixing the ensemble (BCQ), or per member before the mix
    (``max_over_samples_first``, CQL's ``min_i max_n Q_i``)."""
    qs = critic(state, actions)  # [N, B, 1] or [N, B, n, 1]
    if actions.dim() == 2:
        return mix_ensemble(qs, ensemble_weight)
    if max_over_samples_first:
        return mix_ensemble(qs.max(-2).values, ensemble_weight)
    return mix_ensemble(qs, ensemble_weight).max(-2).values


# --- targets (prepare functions) ---------------------------------------------------------------------------------

@declare(reads=[K.REWARD, K.DONE, (K.NEXT, K.OBS)], writes=[Q_TARGET])
def value_target(batch, value, discount: float | None = None) -> dict:
    """IQL: ``r + (1 - done) * gamma * V(s')``."""
    return {Q_TARGET: bootstrap(batch, value(next_state(batch)), discount)}


@declare(reads=[K.REWARD, K.DONE, (K.NEXT, K.OBS), "{next_action_key}"], writes=[Q_TARGET])
def actor_target(batch, actor, critic, ensemble_weight: float = 1.0, noise_std: float = 0.0,
                 noise_clip: float = 0.5, discount: float | None = None, bc_coef: float = 0.0,
                 next_action_key: str | None = None) -> dict:
    """TD3 (-BC): next action ``a' = clip(actor'(s') + clip(N(0, noise_std^2), +-noise_clip), -1, 1)`` (target policy
    smoothing), scored by the target critics mixed with ``ensemble_weight``. ReBRAC's critic penalty: with
    ``next_action_key`` (the data's next action ``a'_data``, :func:`~modmimic.components.batching.n_step_transition`)
    the next value is ``mix_i Q'_i(s', a') - bc_coef * ||a' - a'_data||^2``."""
    nxt = next_state(batch)
    a = actor(nxt)
    if noise_std > 0:
        a = (a + (torch.randn_like(a) * noise_std).clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)
    v = next_q_value(critic, nxt, a, ensemble_weight)
    if next_action_key is not None:
        v = v - bc_coef * (a - batch.get(K.as_key(next_action_key))).pow(2).sum(-1, keepdim=True)
    return {Q_TARGET: bootstrap(batch, v, discount)}


@declare(reads=[K.REWARD, K.DONE, (K.NEXT, K.OBS)], writes=[Q_TARGET], needs={"policy": ("rsample", "rsample_with_log_prob")})
def policy_target(batch, policy, critic, log_alpha=None, num_samples: int = 1, deterministic_backup: bool = True,
                  ensemble_weight: float = 1.0, discount: float | None = None) -> dict:
    """CQL/SAC: ``a' ~ pi(s')``; the target critics' min (max over ``num_samples`` samples per member when > 1);
    with one sample and ``deterministic_backup=False`` the soft backup subtracts ``alpha * log pi(a'|s')``."""
    nxt = next_state(batch)
    dist = policy(nxt)
    if num_samples > 1:
        a = dist.rsample((num_samples,)).transpose(0, 1)  # [B, n, A]
        v = next_q_value(critic, nxt, a, ensemble_weight, max_over_samples_first=True)
    else:
        a, log_prob = dist.rsample_with_log_prob()
        v = next_q_value(critic, nxt, a, ensemble_weight)
        if not deterministic_backup:
            v = v - log_alpha().exp() * log_prob.unsqueeze(-1)
    return {Q_TARGET: bootstrap(batch, v, discount)}


# --- losses ------------------------------------------------------------------------------------------------------

@declare(reads=[K.ACTION, "{target_key}"], writes=["{keep_pred}"])
def td_loss(batch, critic, target_key: str = Q_TARGET, use_huber: bool = False, keep_pred: str | None = None) -> dict:
    """Sum over ensemble members of ``MSE(Q_i(s, a), y)`` (``SmoothL1`` with ``use_huber``), ``y = batch[target_key]``.

    Members are independent, so one optimizer step on the sum equals robomimic's step of one optimizer per member
    (Adam is per parameter). ``keep_pred`` returns the predictions as ``[B, N, 1]`` *with their graph* under that key
    (a declared write), for a later loss of the same update (the CQL penalty's data term)."""
    q = critic(batch, batch.get(K.ACTION))  # [N, B, 1]
    y = batch.get(target_key).unsqueeze(0).expand_as(q)
    err = F.smooth_l1_loss(q, y, reduction="none") if use_huber else (q - y).pow(2)
    per_member = err.mean((1, 2))
    out = {"loss": per_member.sum(), "q_pred": q.detach().mean(), "q_target": y.detach().mean()}
    if keep_pred is not None:
        out[keep_pred] = q.movedim(0, 1)
    for i, member_loss in enumerate(per_member.detach().unbind(0)):
        out[f"critic{i + 1}_loss"] = member_loss
    return out


# --- distributional (C51) ----------------------------------------------------------------------------------------

def project_values_onto_atoms(values: torch.Tensor, probabilities: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """C51 projection: the distribution putting ``probabilities[..., i]`` on ``values[..., i]`` (clipped to the
    support), spread onto the two neighbouring ``atoms`` by linear interpolation. ``values``/``probabilities``
    ``[..., M]``, ``atoms`` ``[K]`` (increasing) -> ``[..., K]``; the total mass is preserved."""
    v = values.clamp(atoms[0], atoms[-1]).unsqueeze(-2)  # [..., 1, M]
    z = atoms.unsqueeze(-1)  # [K, 1]
    gaps = atoms[1:] - atoms[:-1]
    below = torch.cat([gaps[:1], gaps]).unsqueeze(-1)  # spacing to the atom below each atom
    above = torch.cat([gaps, gaps[-1:]]).unsqueeze(-1)  # spacing to the atom above each atom
    delta = v - z  # [..., K, M]
    dist = torch.where(delta >= 0, delta / above, -delta / below)
    weights = (1.0 - dist).clamp(0.0, 1.0)
    return (weights * probabilities.unsqueeze(-2)).sum(-1)


@declare(reads=[K.ACTION, "{target_key}"])
def c51_loss(batch, critic, target_key: str = "q_target_probs") -> dict:
    """``KL(target || softmax(logits))`` averaged over the batch (robomimic ``KLDivLoss(reduction="batchmean")``)."""
    logits = critic.logits(batch, batch.get(K.ACTION))
    log_probs = torch.log_softmax(logits, -1)
    target = batch.get(target_key)
    loss = F.kl_div(log_probs, target, reduction="batchmean")
    q = (log_probs.exp() * critic.atoms).sum(-1)
    return {"loss": loss, "q_pred": q.detach().mean(), "q_target": (target * critic.atoms).sum(-1).mean()}
