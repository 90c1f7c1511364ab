"""Subgoal planner losses (robomimic GL / GL_VAE) and the no-grad subgoal quantities hierarchical recipes prepare.

The batch is :func:`modmimic.components.batching.subgoal_step`'s: ``[B]`` observations (and goal) with the targets
``("subgoal", k)`` = the observation ``subgoal_horizon`` steps ahead.
"""
from __future__ import annotations

import torch.nn.functional as F

from modmimic import keys as K
from modmimic.keys import declare
from modmimic.components.losses.vae import gumbel_temperature


@declare(reads=[K.SUBGOAL])
def subgoal_mse(batch, planner) -> dict:
    """robomimic GL: ``sum_k MSE(planner(batch)[k], batch["subgoal", k])`` over the subgoal keys (each key's MSE
    averaged over its elements and the batch)."""
    pred = planner(batch)
    per_key = {k: F.mse_loss(v, batch.get((K.SUBGOAL, k))) for k, v in pred.items()}
    loss = sum(per_key.values())
    return {"loss": loss, "goal_loss": loss.detach(), **{f"goal_{k}_loss": v.detach() for k, v in per_key.items()}}


@declare(reads=[K.SUBGOAL], context=("epoch",))
def subgoal_vae_elbo(batch, planner, *, kl_weight: float = 1.0, epoch: int = 0, init_temp: float = 1.0,
                     temp_anneal_step: float = 0.001, min_temp: float = 0.3) -> dict:
    """robomimic GL_VAE: ``recons + kl_weight * KL`` of the subgoal VAE (:class:`GLVAEPlanner`), the categorical
    prior's Gumbel temperature annealed by epoch. Logs the mean encoder variance (continuous latents)."""
    if planner.is_categorical:
        planner.set_gumbel_temperature(gumbel_temperature(epoch, init_temp, temp_anneal_step, min_temp))
    out = planner(batch)
    recons, kl = out["reconstruction_loss"], out["kl_loss"]
    loss = recons + kl_weight * kl
    info = {"loss": loss, "reconstruction_loss": recons.detach(), "kl_loss": kl.detach()}
    if planner.is_categorical:
        info["gumbel_temperature"] = planner.get_gumbel_temperature()
    else:
        info["encoder_variance"] = out["encoder_params"]["logvar"].detach().exp().mean()
    return info


# --- prepare steps (no grad) for hierarchical recipes --------------------------------------------------------

def predicted_subgoals(batch, planner) -> dict:
    """HBC ``mode: cascade``: the planner's own subgoal predictions ``{("subgoal", k): [B, d_k]}``, to train the
    actor on (computed under no grad by the engine's ``prepare``)."""
    pred = planner.get_subgoal_predictions(batch)
    return {(K.SUBGOAL, k): v for k, v in pred.get(K.SUBGOAL).items()}


def latent_subgoal_targets(batch, planner, prior_correction: bool = False, num_prior_samples: int = 100) -> dict:
    """HBC with ``latent_subgoal.enabled``: ``{("subgoal", "latent_subgoal"): z}``, the posterior latent of the
    batch's subgoal, or (``prior_correction``) the nearest of ``num_prior_samples`` prior latents to it."""
    from modmimic.components.nets.planner import LATENT_SUBGOAL

    z = planner.latent_subgoals(batch, prior_correction=prior_correction, num_prior_samples=num_prior_samples)
    return {(K.SUBGOAL, LATENT_SUBGOAL): z}


@declare(reads=["{actor_batch}"], writes=["{actor_batch}.{goal_group}"])
def actor_subgoals(batch, planner, sampler=None, critic=None, mode: str = "separate", latent: bool = False,
                   prior_correction: bool = False, num_prior_samples: int = 100, num_samples: int = 100,
                   num_action_samples: int = 100, actor_batch: str = "actor", goal_group: str = K.SUBGOAL) -> dict:
    """The actor's subgoals in a hierarchical batch (robomimic HBC/IRIS), written over ``batch[actor_batch]``'s
    ``(goal_group, k)`` and repeated over its ``T`` steps:

    * ``mode="separate"``: the dataset subgoal the actor batch already holds (nothing to write), or with ``latent``
      its posterior latent under the planner (prior-corrected: the nearest of ``num_prior_samples`` prior latents);
    * ``mode="cascade"``: the planner's own subgoal for the window's first observation (and goal) — a latent in
      latent mode (robomimic ``get_subgoal_predictions``); with a BCQ ``sampler`` and ``critic`` (IRIS) the
      ValuePlanner's choice: the best of ``num_samples`` planner samples by the best-action value over
      ``num_action_samples`` sampler actions.

    Runs under no grad (a ``prepare`` step)."""
    if mode not in ("separate", "cascade"):
        raise ValueError(f"mode must be 'separate' or 'cascade', got {mode!r}")
    if mode == "separate" and not latent:
        return {}
    actor = batch.get(actor_batch)
    B, T = actor.batch_size
    first = actor[:, 0]
    if mode == "cascade" and critic is not None:
        from modmimic.components.acting import BestActionValue, ValuePlanner

        value = BestActionValue({"sampler": sampler, "critic": critic}, "sampler", "critic",
                                num_samples=num_action_samples)
        pred = ValuePlanner({}, planner=planner, value=value, num_samples=num_samples).get_subgoal_predictions(first)
        sub = {(K.SUBGOAL, k): v for k, v in pred.get(K.SUBGOAL).items()}
    elif mode == "cascade":
        sub = predicted_subgoals(first, planner)
    else:
        first = first.clone(False)
        first.set(K.SUBGOAL, first.get(goal_group))  # the planner reads its targets from the subgoal group
        sub = latent_subgoal_targets(first, planner, prior_correction, num_prior_samples)
    return {(actor_batch, goal_group, k[-1]): v.unsqueeze(1).expand(B, T, *v.shape[1:]) for k, v in sub.items()}


__all__ = ["actor_subgoals", "latent_subgoal_targets", "predicted_subgoals", "subgoal_mse", "subgoal_vae_elbo"]
