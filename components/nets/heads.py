"""Action heads: feature ``[..., H]`` -> action (deterministic) or action distribution.

* :class:`DeterministicHead` — ``tanh(Linear(h))`` (robomimic ``ActorNetwork``).
* :class:`GaussianHead` — diagonal Gaussian (robomimic ``GaussianActorNetwork``): tanh-squashed mean (or a
  tanh-wrapped distribution with ``use_tanh``), std by softplus (scaled so that a zero input gives ``init_std``),
  exp, or fixed; clamped to ``[min_std, max_std]``; low-noise evaluation (std 1e-4, i.e. the mean) in eval mode.
* :class:`GMMHead` — mixture of ``num_modes`` diagonal Gaussians (robomimic ``GMMActorNetwork``): tanh means,
  ``activation(scale) + min_std``; in eval mode with ``low_noise_eval`` every std is 1e-4, so a sample is (almost)
  the mean of a mode drawn by the mixture weights, exactly as robomimic evaluates.

``head.act(h)`` gives the evaluation action: the deterministic output, the distribution's low-noise sample, or its
mean when ``low_noise_eval`` is off. ``head.dist(h)`` gives the action distribution with the uniform interface of
:mod:`~modmimic.components.nets.distributions` (a :class:`PointMass` for the deterministic head, whose ``forward``
stays the action tensor); ``head.distribution_ops`` lists the operations it offers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from modmimic.components.nets.distributions import (ALL_OPS, MIXTURE_OPS, POINT_MASS_OPS, DiagGaussian,
                                                    GaussianMixture, PointMass, TanhWrapped)

__all__ = ["DeterministicHead", "GaussianHead", "GMMHead", "HEADS", "LOW_NOISE_STD", "TanhWrapped"]

LOW_NOISE_STD = 1e-4


class DeterministicHead(nn.Module):
    distribution_ops = POINT_MASS_OPS

    def __init__(self, input_dim: int, ac_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, ac_dim)

    def forward(self, h):
        return torch.tanh(self.linear(h))

    act = forward

    def dist(self, h) -> PointMass:
        return PointMass(self.forward(h), type(self).__name__)


def _std_activation(name: str | None, init_std: float):
    if name == "softplus":
        scale = init_std / math.log(2.0)  # softplus(0) = log 2 -> init_std
        return lambda x: F.softplus(x) * scale
    if name == "exp":
        return torch.exp
    if name is None or name == "none":
        return lambda x: x
    raise ValueError(f"unknown std_activation {name!r}: expected 'softplus', 'exp' or None")


class GaussianHead(nn.Module):
    distribution_ops = ALL_OPS

    def __init__(self, input_dim: int, ac_dim: int, fixed_std: bool = False, init_std: float = 0.3,
                 std_activation: str | None = "softplus", min_std: float = 0.007, max_std: float = 7.5,
                 mean_limits=(-9.0, 9.0), low_noise_eval: bool = True, use_tanh: bool = False,
                 init_last_fc_weight: float | None = None):
        super().__init__()
        self.ac_dim, self.fixed_std, self.init_std = ac_dim, fixed_std, init_std
        self.min_std, self.max_std, self.mean_limits = min_std, max_std, tuple(mean_limits)
        self.low_noise_eval, self.use_tanh = low_noise_eval, use_tanh
        self.std_activation = std_activation
        self._act = _std_activation(std_activation, init_std)
        self.linear = nn.Linear(input_dim, ac_dim if fixed_std else 2 * ac_dim)
        if init_last_fc_weight is not None:
            nn.init.uniform_(self.linear.weight, -init_last_fc_weight, init_last_fc_weight)
            nn.init.uniform_(self.linear.bias, -init_last_fc_weight, init_last_fc_weight)

    def forward(self, h) -> Distribution:
        out = self.linear(h)
        mean = out[..., :self.ac_dim]
        if self.use_tanh:
            mean = mean.clamp(*self.mean_limits)
        else:
            mean = torch.tanh(mean)
        if self.low_noise_eval and not self.training:
            std = torch.full_like(mean, LOW_NOISE_STD)
        elif self.fixed_std:
            std = torch.full_like(mean, self.init_std)
        else:
            std = self._act(out[..., self.ac_dim:]).clamp(self.min_std, self.max_std)
        if self.use_tanh:
            return TanhWrapped(DiagGaussian(mean, std, "GaussianHead"), name="GaussianHead (use_tanh)")
        return DiagGaussian(mean, std, "GaussianHead")

    dist = forward

    def act(self, h):
        dist = self.forward(h)
        if self.low_noise_eval and not self.training:
            return dist.mean  # std is 1e-4: the mean, without sampling noise
        return dist.sample()


class GMMHead(nn.Module):
    distribution_ops = MIXTURE_OPS

    def __init__(self, input_dim: int, ac_dim: int, num_modes: int = 5, min_std: float = 0.01,
                 std_activation: str | None = "softplus", low_noise_eval: bool = True, use_tanh: bool = False):
        super().__init__()
        self.ac_dim, self.num_modes, self.min_std = ac_dim, num_modes, min_std
        self.low_noise_eval, self.use_tanh = low_noise_eval, use_tanh
        self._act = {"softplus": F.softplus, "exp": torch.exp}.get(std_activation)
        if self._act is None:
            raise ValueError(f"unknown GMM std_activation {std_activation!r}: expected 'softplus' or 'exp'")
        self.linear = nn.Linear(input_dim, num_modes * (2 * ac_dim + 1))

    def forward(self, h) -> Distribution:
        out = self.linear(h)
        M, A = self.num_modes, self.ac_dim
        lead = out.shape[:-1]
        means = out[..., :M * A].reshape(*lead, M, A)
        scales = out[..., M * A:2 * M * A].reshape(*lead, M, A)
        logits = out[..., 2 * M * A:]
        if not self.use_tanh:
            means = torch.tanh(means)
        if self.low_noise_eval and not self.training:
            scales = torch.full_like(means, LOW_NOISE_STD)
        else:
            scales = self._act(scales) + self.min_std
        if self.use_tanh:
            return TanhWrapped(GaussianMixture(logits, means, scales, "GMMHead"), name="GMMHead (use_tanh)")
        return GaussianMixture(logits, means, scales, "GMMHead")

    dist = forward

    def act(self, h):
        return self.forward(h).sample()


HEADS = {"deterministic": DeterministicHead, "gaussian": GaussianHead, "gmm": GMMHead}
