"""TD3-BC actor (robomimic ``td3_bc.py``; Fujimoto & Gu 2021). The critic is the TD critic with the TD3 target
(:func:`~modmimic.components.losses.critic.actor_target`: target actor, clipped smoothing noise, min of the target
critics); the recipe updates the actor and every target network on every ``update_freq``-th step only."""
from __future__ import annotations

import torch.nn.functional as F

from modmimic import keys as K
from modmimic.keys import declare


@declare(reads=[K.ACTION])
def td3_bc_actor(batch, actor, critic, alpha: float = 2.5) -> dict:
    """``-lambda * mean Q_1(s, pi(s)) + MSE(pi(s), a)`` with ``lambda = alpha / mean|Q_1|`` (detached)."""
    a = actor(batch)
    q = critic.q1(batch, a)
    lam = alpha / q.abs().mean().detach()
    bc = F.mse_loss(a, batch.get(K.ACTION))
    loss = -lam * q.mean() + bc
    return {"loss": loss, "bc_loss": bc.detach(), "lambda": lam, "q": q.detach().mean()}
