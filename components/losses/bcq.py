"""BCQ pieces (robomimic ``bcq.py``, Fujimoto et al. 2019): candidate actions from a behaviour model, the critic
target that maximises over them, the perturbation actor, and the C51 variant of the target.

The behaviour model ("action sampler") is a BC component: the VAE actor (``act(td, n=N)``) or a GMM policy. As in
robomimic it is used in eval mode for the critic target, the actor loss and acting (a GMM then gives low-noise
samples), and trained by its own loss (ELBO or NLL) first in every step, so the targets see the updated sampler.
"""
from __future__ import annotations

import contextlib

import torch

from modmimic import keys as K
from modmimic.keys import declare
from modmimic.components.batching import next_state
from modmimic.components.losses.critic import bootstrap, next_q_value, project_values_onto_atoms, Q_TARGET
from modmimic.components.losses.vae import vae_elbo
from modmimic.keys import declare

Q_TARGET_PROBS = "q_target_probs"


@contextlib.contextmanager
def eval_mode(module):
    """Temporarily put ``module`` in eval mode."""
    was = module.training
    module.train(False)
    try:
        yield module
    finally:
        module.train(was)


def sample_actions(sampler, td, n: int) -> torch.Tensor:
    """``n`` actions per state from the behaviour model: ``[B, n, A]`` (same distribution as robomimic's tiling of
    the observations ``n`` times). The VAE actor decodes ``n`` prior samples per row; a policy computes its features
    once and samples its head ``n`` times per row."""
    if hasattr(sampler, "vae"):
        return sampler.act(td, n=n)
    feat, _ = sampler.features(td)
    feat = feat.unsqueeze(-2).expand(*feat.shape[:-1], n, feat.shape[-1])
    return sampler.head.act(feat)


def candidates(sampler, td, n: int, actor=None) -> torch.Tensor:
    """Sampler candidates ``[B, n, A]``, perturbed by ``actor(s, a)`` when given (sampler in eval mode)."""
    with eval_mode(sampler):
        a = sample_actions(sampler, td, n)
    return a if actor is None else actor(td, a)


@declare(reads=[K.REWARD, K.DONE, (K.NEXT, K.OBS)], writes=[Q_TARGET], needs={"sampler": ("sample",)})
def sampler_target(batch, sampler, critic, actor=None, num_samples: int = 10, ensemble_weight: float = 0.75,
                   discount: float | None = None) -> dict:
    """BCQ: ``r + (1 - done) * gamma * max_j mix_i Q'_i(s', a_j)`` over ``num_samples`` sampler actions at ``s'``
    (perturbed by the target actor when the recipe has one)."""
    nxt = next_state(batch)
    a = candidates(sampler, nxt, num_samples, actor)
    return {Q_TARGET: bootstrap(batch, next_q_value(critic, nxt, a, ensemble_weight), discount)}


@declare(reads=[K.REWARD, K.DONE, (K.NEXT, K.OBS)], writes=[Q_TARGET_PROBS], needs={"sampler": ("sample",)})
def c51_target(batch, sampler, critic, actor=None, num_samples: int = 10, discount: float | None = None) -> dict:
    """BCQ-distributional: among the candidates at ``s'`` take the one of highest expected target value, shift its
    atoms by the Bellman backup ``r + (1 - done) * gamma * z`` and project them back onto the support."""
    nxt = next_state(batch)
    a = candidates(sampler, nxt, num_samples, actor)
    probs = torch.softmax(critic.logits(nxt, a), -1)  # [B, n, M]
    best = (probs * critic.atoms).sum(-1).argmax(-1)  # [B]
    best_probs = probs[torch.arange(probs.shape[0], device=probs.device), best]  # [B, M]
    grid = bootstrap(batch, critic.atoms.expand_as(best_probs), discount)  # [B, M]
    return {Q_TARGET_PROBS: project_values_onto_atoms(grid, best_probs, critic.atoms)}


@declare(needs={"sampler": ("sample",)})
def perturbation_actor_loss(batch, actor, critic, sampler) -> dict:
    """``-mean Q_1(s, actor(s, a))`` with ``a`` one (detached) sampler action per state."""
    a = candidates(sampler, batch, 1)[..., 0, :].detach()
    q = critic.q1(batch, actor(batch, a))
    return {"loss": -q.mean(), "q": q.detach().mean()}


@declare(reads=[K.ACTION], context=("epoch",))
def sampler_elbo(batch, vae, kl_weight: float = 1.0, epoch: int = 0, init_temp: float = 1.0,
                 temp_anneal_step: float = 0.001, min_temp: float = 0.3, freeze_encoder_epoch: int = -1) -> dict:
    """The VAE action sampler's ELBO, with the encoder output detached from ``freeze_encoder_epoch`` on (-1: never)."""
    freeze = freeze_encoder_epoch != -1 and epoch >= freeze_encoder_epoch
    return vae_elbo(batch, vae, kl_weight=kl_weight, epoch=epoch, init_temp=init_temp,
                    temp_anneal_step=temp_anneal_step, min_temp=min_temp, freeze_encoder=freeze)


def best_of(sampler, critic, td, num_samples: int = 100, actor=None):
    """Acting: ``(best action [B, A], its value [B, 1])`` among ``num_samples`` (perturbed) candidates scored by
    ``critic.q1`` (robomimic ``_get_best_value``)."""
    a = candidates(sampler, td, num_samples, actor)
    q = critic.q1(td, a)[..., 0]  # [B, n]
    idx = q.argmax(-1)
    rows = torch.arange(a.shape[0], device=a.device)
    return a[rows, idx], q[rows, idx].unsqueeze(-1)
