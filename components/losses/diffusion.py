"""Diffusion Policy's denoising loss (robomimic ``DiffusionPolicyUNet.train_on_batch``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from modmimic import keys as K
from modmimic.keys import declare


@declare(reads=[K.ACTION])
def noise_prediction(batch, policy) -> dict:
    """Sample ``eps ~ N(0, I)`` and a timestep ``t ~ U{0, .., T-1}`` per window, noise the action chunk
    ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with the policy's schedule, and regress the denoiser's output on
    ``eps`` (``prediction_type: epsilon``) or on ``x_0`` (``sample``) with the mean squared error.

    ``batch``: ``[B, To]`` observations and ``[B, Tp, A]`` actions (:func:`~modmimic.components.batching.
    horizon_window`); ``policy``: a :class:`~modmimic.components.nets.diffusion.DiffusionPolicy`."""
    x0 = batch[K.ACTION]
    cond = policy.condition(batch)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)  # noise first, then t (robomimic's order)
    t = torch.randint(0, policy.schedule.num_train_timesteps, (x0.shape[0],), device=x0.device)
    out = policy.denoise(policy.schedule.q_sample(x0, noise, t), t, cond)
    target = noise if policy.schedule.prediction_type == "epsilon" else x0
    loss = F.mse_loss(out, target)
    return {"loss": loss, "l2_loss": loss.detach()}
