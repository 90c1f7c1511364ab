"""Conditional flow matching (rectified flow) over action chunks; the path convention is
:mod:`~modmimic.components.nets.flow`'s."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from modmimic import keys as K
from modmimic.keys import declare


@declare(reads=[K.ACTION])
def flow_matching(batch, policy) -> dict:
    """Draw ``noise ~ N(0, I)`` and then ``t ~ U[0, 1)`` per window, form ``x_t = (1 - t) noise + t x_1`` from the
    action chunk ``x_1``, and regress the denoiser's velocity ``v(x_t, t, obs)`` on ``x_1 - noise`` (mean squared
    error). ``batch`` and ``policy`` as :func:`~modmimic.components.losses.diffusion.noise_prediction`'s."""
    x1 = batch[K.ACTION]
    cond = policy.condition(batch)
    noise = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype)
    t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
    tb = t.view(-1, *([1] * (x1.dim() - 1)))
    v = policy.denoise((1.0 - tb) * noise + tb * x1, policy.schedule.net_time(t), cond)
    loss = F.mse_loss(v, x1 - noise)
    return {"loss": loss, "l2_loss": loss.detach()}
