"""ACT's loss (Zhao et al. 2023): ``L1(predicted chunk, data chunk) + kl_weight * KL(q(z | a, s) || N(0, I))``.

The L1 term averages over the real steps of each chunk only: near a demo's end the window sampler pads the chunk
by repeating the last step and marks those steps False in ``("collector", "mask")``; they do not count (neither in
the sum nor in the number of terms averaged). LeRobot zeroes padded terms but still divides by every element, which
shrinks the loss of chunks near demo ends; here every real step weighs the same. The KL term is summed over latent
dimensions and averaged over the batch (ACT, LeRobot).
"""
from __future__ import annotations

import torch

from modmimic import keys as K
from modmimic.keys import declare


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per row ``[B]``: ``-0.5 * sum(1 + logvar - mu^2 - exp(logvar))``."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean ``|pred - target|`` over the elements of the steps where ``mask`` ``[B, k]`` is True (all without one)."""
    err = (pred - target).abs()
    if mask is None:
        return err.mean()
    w = mask.to(err.dtype).unsqueeze(-1)
    return (err * w).sum() / (w.sum() * err.shape[-1])


@declare(reads=[K.OBS, K.ACTION, K.MASK])
def act_loss(batch, policy, *, kl_weight: float = 10.0) -> dict:
    """ACT's CVAE loss for a ``[B]`` batch whose ``action`` is the chunk ``[B, k, A]`` and ``("collector", "mask")``
    ``[B, k]`` marks its real steps (:func:`~modmimic.components.batching.action_chunk`); ``policy`` is an
    :class:`~modmimic.components.nets.act.ACT`."""
    if kl_weight < 0:
        raise ValueError(f"algo.act.kl_weight must be >= 0, got {kl_weight}")
    out = policy(batch)
    l1 = masked_l1(out["action"], batch.get(K.ACTION), batch.get(K.MASK, None))
    kl = kl_to_standard_normal(out["mu"], out["logvar"]).mean()
    return {"loss": l1 + kl_weight * kl, "l1_loss": l1.detach(), "kl_loss": kl.detach()}
