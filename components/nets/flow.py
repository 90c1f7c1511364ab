"""Flow-matching action heads (conditional flow matching / rectified flow) on Diffusion Policy's networks.

Convention (rectified flow, Liu et al. 2022; Lipman et al. 2023's optimal-transport path with ``sigma_min = 0``):
``t`` in ``[0, 1]``, ``t = 0`` is Gaussian noise and ``t = 1`` the data,

    x_t = (1 - t) * noise + t * x_1,        velocity target  u = x_1 - noise   (the straight path's derivative).

Sampling integrates ``dx/dt = v(x_t, t, obs)`` from ``t = 0`` to ``1`` with ``steps`` Euler steps of ``dt = 1 / steps``.
The denoiser (UNet or transformer, :mod:`~modmimic.components.nets.diffusion`) sees the time as ``t * time_scale``:
its sinusoidal step embedding was made for diffusion's integer steps (0..99), so ``time_scale = 100`` keeps the same
range of frequencies. When the data given the observations is a single chunk ``x_1``, the optimal velocity
``(x_1 - x_t) / (1 - t) = x_1 - noise`` is constant along the path, and one Euler step lands on ``x_1``.

* :class:`FlowSchedule` — the schedule that :class:`~modmimic.components.nets.diffusion.DiffusionPolicy`'s sampler
  loop runs (``timesteps()``, ``step()``), and ``net_time`` for the loss
  (:func:`~modmimic.components.losses.flow.flow_matching`).
* :func:`flow_policy` — the network a recipe names: Diffusion Policy's observation encoder and denoiser with a
  :class:`FlowSchedule` (EMA, checkpoints and chunked acting are Diffusion Policy's).
"""
from __future__ import annotations

import torch
from torch import nn

from modmimic.components.nets.diffusion import DiffusionPolicy, observation_encoder_and_denoiser


class FlowSchedule(nn.Module):
    """Euler integration of a learned velocity field over ``steps`` equal steps (no parameters, no buffers).

    ``clip_sample``: the final chunk is clamped to ``[-clip_sample_range, clip_sample_range]`` (the normalized action
    range; DDIM clips its clean-sample estimate the same way)."""

    def __init__(self, steps: int = 10, time_scale: float = 100.0, clip_sample: bool = True,
                 clip_sample_range: float = 1.0):
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"algo.flow.steps must be an int >= 1, got {steps!r}")
        if not float(time_scale) > 0:
            raise ValueError(f"algo.flow.time_scale must be > 0, got {time_scale!r}")
        self.steps, self.time_scale = int(steps), float(time_scale)
        self.clip_sample, self.clip_sample_range = bool(clip_sample), float(clip_sample_range)
        self._ts = [self.time_scale * i / self.steps for i in range(self.steps)]

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """Flow time ``t`` in ``[0, 1]`` -> the denoiser's time input."""
        return t * self.time_scale

    def timesteps(self) -> list:
        """The denoiser times of the Euler steps, ``t_i = i / steps`` for ``i = 0 .. steps - 1`` (scaled)."""
        return list(self._ts)

    sampler = "euler"  # deterministic: the initial noise is the only draw

    def noise_draws(self) -> int:
        """Gaussian draws the sampling loop makes after the initial sample (exported policies take them as input)."""
        return 0

    def noised_after(self, x1: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
        """``x1`` on its straight path at the time the Euler step at ``t`` reaches, ``(1 - s) noise + s x1`` with
        ``s = t / time_scale + 1 / steps``: how inpainting writes known actions into the sample."""
        s = min(1.0, t / self.time_scale + 1.0 / self.steps)
        return (1.0 - s) * noise + s * x1

    def step(self, out: torch.Tensor, t: float, x_t: torch.Tensor, generator=None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x_{t + dt} = x_t + dt * v`` with ``v = out``; the last step clips when ``clip_sample``."""
        x = x_t + out / self.steps
        if self.clip_sample and t == self._ts[-1]:
            x = x.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x

    def extra_repr(self) -> str:
        return (f"flow matching, Euler {self.steps} steps, time scale {self.time_scale:g}, "
                f"clip_sample={self.clip_sample}")


def flow_policy(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, denoiser: str = "unet",
                horizon: dict | None = None, unet: dict | None = None, transformer: dict | None = None,
                flow: dict | None = None, encoder: dict | None = None, task_dim: int | None = None,
                task_fuse: str = "film") -> DiffusionPolicy:
    """Diffusion Policy's network (:func:`~modmimic.components.nets.diffusion.diffusion_policy`: the same
    ``horizon``, ``unet`` / ``transformer`` and ``encoder`` sections) sampling with a :class:`FlowSchedule` built from
    ``flow`` (``steps``, ``time_scale``, ``clip_sample``, ``clip_sample_range``); ``task_dim``, ``task_fuse``: a
    multi-task policy, as Diffusion Policy's."""
    enc, net, To, Tp = observation_encoder_and_denoiser(obs_shapes, ac_dim, goal_shapes, denoiser, horizon, unet,
                                                        transformer, encoder, task_dim, task_fuse)
    return DiffusionPolicy(enc, net, FlowSchedule(**dict(flow or {})), To, Tp, ac_dim)
