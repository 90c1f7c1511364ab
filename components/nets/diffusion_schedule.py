"""Diffusion noise schedules and samplers (DDPM, DDIM) as small pure functions, plus :class:`NoiseSchedule`, which
holds one schedule's ``alphas_cumprod`` and settings.

Notation: ``a_t = alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)``; the forward process is
``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``. The formulas (and defaults) are those of diffusers'
``DDPMScheduler`` (``variance_type="fixed_small"``) and ``DDIMScheduler`` (``eta=0``) that robomimic's Diffusion Policy
uses; modmimic does not depend on diffusers (robomimic pins diffusers 0.11.1 for its old EMA API, reference §2.9).

* ``squaredcos_cap_v2`` betas: ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)`` with
  ``abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2`` (Nichol & Dhariwal's cosine schedule);
  ``linear``: ``beta`` evenly spaced in ``[1e-4, 0.02]``.
* inference timesteps ("leading" spacing): ``ratio = T // n``; ``[(n-1)*ratio, ..., ratio, 0] + steps_offset``.
* a step from ``t`` goes to ``t_prev = t - T // n`` (``a_prev = 1`` below 0 for DDPM; for DDIM ``1`` with
  ``set_alpha_to_one``, else ``a_0``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
PREDICTION_TYPES = ("epsilon", "sample")
SAMPLERS = ("ddpm", "ddim")


def betas_for(num_train_timesteps: int, beta_schedule: str = "squaredcos_cap_v2") -> torch.Tensor:
    """``[T]`` float32 betas of a named schedule (computed in float64, then rounded once)."""
    T = int(num_train_timesteps)
    if beta_schedule == "squaredcos_cap_v2":
        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(1e-4, 0.02, T, dtype=torch.float32)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}: expected one of {list(BETA_SCHEDULES)}")


def alphas_cumprod_for(betas: torch.Tensor) -> torch.Tensor:
    """``a_t = prod_{s <= t} (1 - beta_s)``."""
    return torch.cumprod(1.0 - betas, dim=0)


def _at(values, t, like: torch.Tensor):
    """``values[t]`` broadcast against ``like`` ``[B, ...]`` (``t``: ``[B]`` tensor or a Python int/float)."""
    if torch.is_tensor(values):
        v = values[t]
        return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v
    return values


def q_sample(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Forward process ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` per sample (``t``: ``[B]`` long)."""
    a = _at(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def predict_x0(a_t: float, x_t: torch.Tensor, out: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean sample implied by the network output: ``(x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` or the output."""
    if prediction_type == "epsilon":
        return (x_t - math.sqrt(1.0 - a_t) * out) / math.sqrt(a_t)
    if prediction_type == "sample":
        return out
    raise ValueError(f"unknown prediction_type {prediction_type!r}: expected one of {list(PREDICTION_TYPES)}")


def ddpm_posterior(a_t: float, a_prev: float, x0: torch.Tensor, x_t: torch.Tensor):
    """``q(x_{t_prev} | x_t, x0)``: ``(mean, variance)`` with ``alpha = a_t / a_prev``, ``beta = 1 - alpha``:
    ``mean = sqrt(a_prev) beta / (1 - a_t) x0 + sqrt(alpha) (1 - a_prev) / (1 - a_t) x_t``,
    ``variance = (1 - a_prev) / (1 - a_t) beta`` (diffusers' "fixed_small", floored at 1e-20)."""
    alpha = a_t / a_prev
    beta = 1.0 - alpha
    mean = (math.sqrt(a_prev) * beta / (1.0 - a_t)) * x0 + (math.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a_t)) * x_t
    return mean, max((1.0 - a_prev) / (1.0 - a_t) * beta, 1e-20)


def ddim_step(a_t: float, a_prev: float, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0): ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``."""
    return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps


def inference_timesteps(num_train_timesteps: int, num_inference_timesteps: int, steps_offset: int = 0) -> list:
    """The descending timesteps a sampler visits ("leading" spacing, as diffusers)."""
    n = int(num_inference_timesteps)
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"num_inference_timesteps ({n}) must be in [1, num_train_timesteps={num_train_timesteps}]")
    ratio = num_train_timesteps // n
    return [i * ratio + int(steps_offset) for i in reversed(range(n))]


class NoiseSchedule(nn.Module):
    """One diffusion schedule: training (:meth:`q_sample`) and sampling (:meth:`step` over :meth:`timesteps`).

    ``alphas_cumprod`` is a non-persistent buffer (rebuilt from the settings, never stored in checkpoints)."""

    def __init__(self, sampler: str = "ddpm", num_train_timesteps: int = 100, num_inference_timesteps: int = 100,
                 beta_schedule: str = "squaredcos_cap_v2", clip_sample: bool = True,
                 prediction_type: str = "epsilon", set_alpha_to_one: bool = True, steps_offset: int = 0,
                 clip_sample_range: float = 1.0):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown diffusion sampler {sampler!r}: expected one of {list(SAMPLERS)}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}: expected one of {list(PREDICTION_TYPES)}")
        self.sampler, self.T = sampler, int(num_train_timesteps)
        self.num_inference_timesteps = int(num_inference_timesteps)
        self.clip_sample, self.clip_sample_range = bool(clip_sample), float(clip_sample_range)
        self.prediction_type, self.set_alpha_to_one = prediction_type, bool(set_alpha_to_one)
        self.steps_offset = int(steps_offset)
        betas = betas_for(self.T, beta_schedule)
        self.register_buffer("alphas_cumprod", alphas_cumprod_for(betas), persistent=False)
        self._ab = self.alphas_cumprod.double().tolist()  # Python floats for the per-step coefficients
        self._ts = inference_timesteps(self.T, self.num_inference_timesteps, self.steps_offset)

    @property
    def num_train_timesteps(self) -> int:
        return self.T

    def q_sample(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return q_sample(self.alphas_cumprod, x0, noise, t)

    def timesteps(self) -> list:
        return list(self._ts)

    def _a_prev(self, t: int) -> float:
        prev = t - self.T // self.num_inference_timesteps
        if prev >= 0:
            return self._ab[prev]
        return 1.0 if (self.sampler == "ddpm" or self.set_alpha_to_one) else self._ab[0]

    def noised_after(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """``x0`` at the noise level the sampler reaches after its step at ``t`` (``sqrt(a) x0 + sqrt(1 - a) noise``
        with ``a`` the previous timestep's alpha-bar): how inpainting writes known actions into the sample."""
        a = self._a_prev(t)
        return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise

    def noise_draws(self) -> int:
        """How many Gaussian draws of the sample's shape one sampling loop makes after the initial noise: DDPM one
        per timestep ``t > 0``, DDIM none (deterministic, eta = 0)."""
        return sum(1 for t in self._ts if t > 0) if self.sampler == "ddpm" else 0

    def step(self, out: torch.Tensor, t: int, x_t: torch.Tensor, generator=None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x_{t_prev}`` from the network output at timestep ``t`` (a Python int). ``noise``: the DDPM draw for this
        step (``t > 0``) given instead of drawn (exported samplers take every draw as an input)."""
        a_t, a_prev = self._ab[t], self._a_prev(t)
        x0 = predict_x0(a_t, x_t, out, self.prediction_type)
        eps = out if self.prediction_type == "epsilon" else (x_t - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        if self.sampler == "ddim":
            return ddim_step(a_t, a_prev, x0, eps)
        mean, var = ddpm_posterior(a_t, a_prev, x0, x_t)
        if t > 0:
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            mean = mean + math.sqrt(var) * noise
        return mean

    def extra_repr(self) -> str:
        return (f"{self.sampler}, train {self.T} / inference {self.num_inference_timesteps} steps, "
                f"{self.prediction_type}, clip_sample={self.clip_sample}")


def schedule_from_config(ddpm: dict | None = None, ddim: dict | None = None) -> NoiseSchedule:
    """robomimic's ``algo.ddpm`` / ``algo.ddim`` sections -> a :class:`NoiseSchedule` (DDPM when enabled, else DDIM;
    exactly one must be enabled)."""
    ddpm, ddim = dict(ddpm or {}), dict(ddim or {})
    on = [n for n, s in (("ddpm", ddpm), ("ddim", ddim)) if s.get("enabled")]
    if len(on) != 1:
        raise ValueError(f"enable exactly one noise scheduler (algo.ddpm.enabled / algo.ddim.enabled), got {on or 'none'}")
    spec = ddpm if on[0] == "ddpm" else ddim
    spec.pop("enabled")
    if on[0] == "ddpm":
        for k in ("set_alpha_to_one", "steps_offset"):
            if k in spec:
                raise ValueError(f"algo.ddpm.{k} is a DDIM setting")
    return NoiseSchedule(on[0], **spec)
