"""Batched observation randomizers (robomimic's ``Randomizer`` family), run on the training device.

A randomizer wraps an encoder core: ``forward_in`` maps processed inputs ``[N, C, H, W]`` to ``[N * n, ...]``
(``n`` = samples per input: random crops, jitters or noise draws in training; one deterministic version in eval),
the core encodes them, and ``forward_out`` averages the ``n`` feature rows of each input back to ``[N, ...]``.
Chains run ``forward_in`` in order and ``forward_out`` in reverse. Every operation covers the whole batch at once
(one gather for all crops, per-sample factors as tensors): no per-sample Python.

* :class:`CropRandomizer` — random ``crop_height x crop_width`` crops in training (``num_crops`` per image), the
  center crop in eval; ``pos_enc`` appends two position channels (row / H, column / W of the uncropped image).
* :class:`ColorRandomizer` — brightness, contrast, saturation and hue jitter with torchvision's factor ranges,
  applied in that fixed order (torchvision shuffles the order per call); identity in eval.
* :class:`GaussianNoiseRandomizer` — ``x + noise_mean + noise_std * N(0, 1)``, optionally clamped to ``limits``;
  identity in eval.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from modmimic.components.nets.vision import position_grid


class Randomizer(nn.Module):
    """Base: ``n`` samples per input in training, one in eval; ``forward_out`` averages the samples."""

    def __init__(self, input_shape: Sequence[int], num_samples: int = 1):
        super().__init__()
        if int(num_samples) < 1:
            raise ValueError(f"{type(self).__name__}: the number of samples must be >= 1, got {num_samples}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_samples = int(num_samples)

    def output_shape_in(self, input_shape=None) -> tuple:
        return tuple(input_shape or self.input_shape)

    def samples(self) -> int:
        """Rows per input that ``forward_in`` makes in the current mode."""
        return self.num_samples if self.training else 1

    def forward_out(self, x: torch.Tensor) -> torch.Tensor:
        n = self.samples()
        return x if n == 1 else x.view(x.shape[0] // n, n, *x.shape[1:]).mean(dim=1)


class CropRandomizer(Randomizer):
    def __init__(self, input_shape: Sequence[int], crop_height: int = 76, crop_width: int = 76, num_crops: int = 1,
                 pos_enc: bool = False):
        super().__init__(input_shape, num_crops)
        _, h, w = self.input_shape
        self.crop_height, self.crop_width, self.pos_enc = int(crop_height), int(crop_width), bool(pos_enc)
        if not (1 <= self.crop_height <= h and 1 <= self.crop_width <= w):
            raise ValueError(f"CropRandomizer: a {crop_height}x{crop_width} crop does not fit images of shape "
                             f"{self.input_shape} (C, H, W)")

    def output_shape_in(self, input_shape=None) -> tuple:
        c = (input_shape or self.input_shape)[0]
        return (c + 2 * self.pos_enc, self.crop_height, self.crop_width)

    def _with_pos(self, x):
        if not self.pos_enc:
            return x
        n, _, h, w = x.shape
        return torch.cat([x, position_grid(h, w, x.device, x.dtype).unsqueeze(0).expand(n, 2, h, w)], dim=1)

    def forward_in(self, x: torch.Tensor) -> torch.Tensor:
        x = self._with_pos(x)
        N, C, H, W = x.shape
        ch, cw = self.crop_height, self.crop_width
        if not self.training:
            top, left = (H - ch) // 2, (W - cw) // 2
            return x[:, :, top:top + ch, left:left + cw]
        n = self.num_samples
        top = torch.randint(0, H - ch + 1, (N, n, 1, 1), device=x.device)
        left = torch.randint(0, W - cw + 1, (N, n, 1, 1), device=x.device)
        rows = top + torch.arange(ch, device=x.device).view(1, 1, ch, 1)
        cols = left + torch.arange(cw, device=x.device).view(1, 1, 1, cw)
        index = (rows * W + cols).view(N, n, 1, ch * cw).expand(N, n, C, ch * cw)
        flat = x.reshape(N, 1, C, H * W).expand(N, n, C, H * W)
        return flat.gather(3, index).view(N * n, C, ch, cw)


def _blend(a, b, ratio):
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def _gray(x):
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = x.unbind(1)
    mx, argmx = x.max(dim=1)
    mn = x.min(dim=1).values
    delta = mx - mn
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], dim=1)
    h = h.gather(1, argmx.unsqueeze(1)).squeeze(1) / 6.0
    h = torch.where(delta > 0, h % 1.0, torch.zeros_like(h))
    s = torch.where(mx > 0, delta / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    return torch.stack([h, s, mx], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) + h.unsqueeze(1) * 6) % 6
    f = torch.minimum(k, 4 - k).clamp(0.0, 1.0)
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * f


class ColorRandomizer(Randomizer):
    def __init__(self, input_shape: Sequence[int], brightness: float = 0.3, contrast: float = 0.3,
                 saturation: float = 0.3, hue: float = 0.3, num_samples: int = 1):
        super().__init__(input_shape, num_samples)
        if self.input_shape[0] != 3:
            raise ValueError(f"ColorRandomizer needs 3-channel RGB images, got shape {self.input_shape}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"ColorRandomizer: hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = (float(v) for v in (brightness, contrast,
                                                                                        saturation, hue))

    def _factor(self, n, spread, device, dtype):
        lo = max(0.0, 1.0 - spread)
        return torch.empty(n, 1, 1, 1, device=device, dtype=dtype).uniform_(lo, 1.0 + spread)

    def forward_in(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.num_samples > 1:
            x = x.repeat_interleave(self.num_samples, dim=0)
        n, dev, dt = x.shape[0], x.device, x.dtype
        if self.brightness > 0:
            x = (x * self._factor(n, self.brightness, dev, dt)).clamp(0.0, 1.0)
        if self.contrast > 0:
            mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = _blend(x, mean, self._factor(n, self.contrast, dev, dt))
        if self.saturation > 0:
            x = _blend(x, _gray(x), self._factor(n, self.saturation, dev, dt))
        if self.hue > 0:
            hsv = rgb_to_hsv(x)
            shift = torch.empty(n, 1, 1, device=dev, dtype=dt).uniform_(-self.hue, self.hue)
            hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], dim=1)
            x = hsv_to_rgb(hsv)
        return x


class GaussianNoiseRandomizer(Randomizer):
    def __init__(self, input_shape: Sequence[int], noise_mean: float = 0.0, noise_std: float = 0.3,
                 limits: Sequence[float] | None = None, num_samples: int = 1):
        super().__init__(input_shape, num_samples)
        self.noise_mean, self.noise_std = float(noise_mean), float(noise_std)
        self.limits = None if limits is None else (float(limits[0]), float(limits[1]))

    def forward_in(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.num_samples > 1:
            x = x.repeat_interleave(self.num_samples, dim=0)
        x = x + torch.randn_like(x) * self.noise_std + self.noise_mean
        return x if self.limits is None else x.clamp(*self.limits)


RANDOMIZERS = {"CropRandomizer": CropRandomizer, "ColorRandomizer": ColorRandomizer,
               "GaussianNoiseRandomizer": GaussianNoiseRandomizer}
