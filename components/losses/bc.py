"""Behaviour-cloning losses: regression for deterministic policies, negative log-likelihood for stochastic ones.

Each returns ``{"loss": differentiable scalar, <metric>: detached scalar, ...}``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from modmimic import keys as K
from modmimic.keys import declare


def supervised(batch, *tensors):
    """The tensors at the steps a loss averages over: all of them, or those where ``batch["loss_mask"]`` is True
    (the mask has the batch shape; the tensors may have trailing dims)."""
    mask = batch.get(K.LOSS_MASK, None)
    return tensors if mask is None else tuple(t[mask] for t in tensors)


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - cos(pred, target)`` averaged (robomimic's ``cosine_loss``)."""
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()


def bc_regression(batch, policy, *, l2_weight: float = 1.0, l1_weight: float = 0.0, cos_weight: float = 0.0,
                  cos_dims: int = 3) -> dict:
    """robomimic BC loss: ``l2_weight * MSE + l1_weight * SmoothL1 + cos_weight * cosine(a[..., :cos_dims])``
    between ``policy(batch)`` and the data action (any batch shape, ``[B]`` or ``[B, T]``)."""
    pred, target = supervised(batch, policy(batch), batch[K.ACTION])
    l2 = F.mse_loss(pred, target)
    l1 = F.smooth_l1_loss(pred, target) if l1_weight else pred.new_zeros(())
    cos = cosine_loss(pred[..., :cos_dims], target[..., :cos_dims]) if cos_weight else pred.new_zeros(())
    loss = l2_weight * l2 + l1_weight * l1 + cos_weight * cos
    return {"loss": loss, "l2_loss": l2.detach(), "l1_loss": l1.detach(), "cosine_loss": cos.detach()}


@declare(needs={"policy": ("log_prob",)})
def nll(batch, policy) -> dict:
    """``-mean log pi(a | s)`` for a policy returning a distribution (Gaussian, GMM, tanh-wrapped) whose batch
    shape equals the batch's (``[B]`` or ``[B, T]``)."""
    log_prob, = supervised(batch, policy(batch).log_prob(batch[K.ACTION]))
    loss = -log_prob.mean()
    return {"loss": loss, "log_likelihood": -loss.detach()}
