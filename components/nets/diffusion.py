"""Diffusion Policy networks: observation encoder + denoiser + noise schedule, acting in action chunks.

* :class:`ConditionalUnet1D` — the 1-D temporal UNet of Diffusion Policy (robomimic §7.7): sinusoidal diffusion-step
  embedding -> MLP; residual blocks of ``Conv1d + GroupNorm + Mish``, each FiLM-conditioned (per-channel scale and
  bias) on ``[step embedding, flattened observation features of the last To steps]``; ``down_dims`` levels down
  (stride-2 conv), two middle blocks, back up (transposed conv) with skip connections, then a 1x1 conv to the
  action dim. ``(x [B, Tp, A], t, cond [B, To, D]) -> [B, Tp, A]``.
* :class:`TransformerDenoiser` — the time-series diffusion transformer of the Diffusion Policy paper: one token
  per noisy action (causal self-attention over them) cross-attending to condition tokens ``[step, obs_1..obs_To]``;
  action token ``i`` sees the step token and the observation tokens ``j <= i + 1`` (the paper's memory mask).
* :class:`DiffusionPolicy` — the network a recipe names: ``condition(td)`` encodes the ``[B, To]`` observation
  window with the modality-aware :class:`~modmimic.components.nets.core.ObsEncoder` (images: one encoder call per
  key on the ``[B * To]`` frames), ``denoise(x_t, t, cond)`` runs the denoiser, ``schedule`` is the
  :class:`NoiseSchedule` shared by the loss (``q_sample``) and the sampler, ``predict_chunk(td) -> [B, Tp, A]``
  samples a chunk from Gaussian noise.

robomimic's ``algo.unet.*`` keys are never passed to its UNet (a bug, reference §13.3): here they build it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from modmimic.components.nets.core import ObsEncoder, group_inputs
from modmimic.components.nets.diffusion_schedule import schedule_from_config
from modmimic.components.nets.film import TaskConditionedEncoder


class SinusoidalStepEmbedding(nn.Module):
    """``t [B] -> [B, dim]``: ``[sin(t w_i), cos(t w_i)]`` with ``w_i = 10000^(-i / (dim/2 - 1))``."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"the diffusion step embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000.0) / (half - 1)))
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _steps(t, B: int, device) -> torch.Tensor:
    """A diffusion timestep (int or tensor) as a ``[B]`` tensor."""
    t = torch.as_tensor(t, device=device)
    return t.expand(B) if t.dim() == 0 else t


class Conv1dBlock(nn.Module):
    """``Conv1d (same padding) -> GroupNorm -> Mish`` over ``[B, C, T]``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        if c_out % n_groups:
            raise ValueError(f"UNet channels {c_out} are not divisible by n_groups={n_groups}")
        self.block = nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, c_out), nn.Mish())

    def forward(self, x):
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; between them FiLM: ``h = scale(cond) * h + bias(cond)`` per channel; residual (1x1 conv
    when the channel count changes)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        self.c_out = c_out
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, cond):
        h = self.block1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        return self.block2(scale * h + bias) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """See the module docstring. ``global_cond_dim = To * D`` (the flattened observation features)."""

    def __init__(self, input_dim: int, global_cond_dim: int, diffusion_step_embed_dim: int = 256,
                 down_dims: Sequence[int] = (256, 512, 1024), kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ValueError("algo.unet.down_dims must list at least one level")
        if kernel_size % 2 == 0:
            raise ValueError(f"algo.unet.kernel_size must be odd (same padding), got {kernel_size}")
        self.levels = len(down_dims)
        dsed = int(diffusion_step_embed_dim)
        self.step_encoder = nn.Sequential(SinusoidalStepEmbedding(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(),
                                          nn.Linear(4 * dsed, dsed))
        cond_dim = dsed + int(global_cond_dim)
        dims = [input_dim] + down_dims
        pairs = list(zip(dims[:-1], dims[1:]))

        def res(a, b):
            return ConditionalResidualBlock1D(a, b, cond_dim, kernel_size, n_groups)

        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(nn.ModuleList([res(a, b), res(b, b),
                                            nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity()]))
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]), res(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for a, b in reversed(pairs[1:]):  # every up level doubles T back; the first level's skip goes unused
            self.up.append(nn.ModuleList([res(2 * b, a), res(a, a), nn.ConvTranspose1d(a, a, 4, 2, 1)]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], input_dim, 1))

    def check_horizon(self, Tp: int) -> None:
        k = 2 ** (self.levels - 1)
        if Tp % k:
            raise ValueError(f"the UNet halves the prediction horizon {self.levels - 1} times: "
                             f"algo.horizon.prediction_horizon ({Tp}) must be a multiple of {k}")

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        """``x [B, Tp, A]``, ``t`` int or ``[B]``, ``cond [B, To, D]`` (or already flat ``[B, To*D]``)."""
        B = x.shape[0]
        g = torch.cat([self.step_encoder(_steps(t, B, x.device)), cond.reshape(B, -1)], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for r1, r2, down in self.down:
            h = r2(r1(h, g), g)
            skips.append(h)
            h = down(h)
        for r in self.mid:
            h = r(h, g)
        for r1, r2, up in self.up:
            h = up(r2(r1(torch.cat([h, skips.pop()], dim=1), g), g))
        return self.final(h).transpose(1, 2)


class TransformerDenoiser(nn.Module):
    """See the module docstring. ``n_cond_layers = 0`` encodes the condition tokens with an MLP (the paper's
    default), else with that many transformer encoder layers."""

    def __init__(self, input_dim: int, cond_dim: int, horizon: int, obs_horizon: int, n_layer: int = 8,
                 n_head: int = 4, n_emb: int = 256, p_drop_emb: float = 0.0, p_drop_attn: float = 0.3,
                 causal_attn: bool = True, n_cond_layers: int = 0):
        super().__init__()
        if n_emb % n_head:
            raise ValueError(f"algo.transformer.n_emb ({n_emb}) must be divisible by n_head ({n_head})")
        self.horizon, self.obs_horizon = int(horizon), int(obs_horizon)
        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.step_emb = SinusoidalStepEmbedding(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, 1 + obs_horizon, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        if n_cond_layers > 0:
            layer = nn.TransformerEncoderLayer(n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.cond_encoder = nn.TransformerEncoder(layer, n_cond_layers)
        else:
            self.cond_encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        layer = nn.TransformerDecoderLayer(n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layer)
        S = 1 + obs_horizon
        i = torch.arange(horizon)[:, None]
        j = torch.arange(S)[None, :]
        # True = not allowed (bool masks of torch attention)
        self.register_buffer("self_mask", (torch.arange(horizon)[None, :] > i) if causal_attn else
                             torch.zeros(horizon, horizon, dtype=torch.bool), persistent=False)
        self.register_buffer("memory_mask", (j - 1 > i) if causal_attn else torch.zeros(horizon, S, dtype=torch.bool),
                             persistent=False)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, input_dim)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def check_horizon(self, Tp: int) -> None:
        if Tp != self.horizon:
            raise ValueError(f"the transformer denoiser was built for {self.horizon} action tokens, got {Tp}")

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        """``x [B, Tp, A]``, ``t`` int or ``[B]``, ``cond [B, To, D]`` -> ``[B, Tp, A]``."""
        B, Tp, _ = x.shape
        if cond.dim() != 3 or cond.shape[1] != self.obs_horizon:
            raise ValueError(f"the transformer denoiser needs [B, To={self.obs_horizon}, D] observation features, "
                             f"got {tuple(cond.shape)}")
        step = self.step_emb(_steps(t, B, x.device)).unsqueeze(1)
        c = torch.cat([step, self.cond_obs_emb(cond)], dim=1) + self.cond_pos_emb
        memory = self.cond_encoder(self.drop(c))
        h = self.drop(self.input_emb(x) + self.pos_emb[:, :Tp])
        h = self.decoder(h, memory, tgt_mask=self.self_mask[:Tp, :Tp], memory_mask=self.memory_mask[:Tp])
        return self.head(self.ln_f(h))


class DiffusionPolicy(nn.Module):
    """Observation encoder + denoiser + noise schedule (see the module docstring)."""

    def __init__(self, encoder: ObsEncoder, denoiser: nn.Module, schedule, obs_horizon: int,
                 prediction_horizon: int, ac_dim: int):
        super().__init__()
        self.encoder, self.denoiser, self.schedule = encoder, denoiser, schedule
        self.obs_horizon, self.prediction_horizon, self.ac_dim = int(obs_horizon), int(prediction_horizon), ac_dim
        self.in_keys = encoder.in_keys
        denoiser.check_horizon(self.prediction_horizon)

    def condition(self, td) -> torch.Tensor:
        """Observation features ``[B, To, D]`` of a ``[B, To]`` window (a ``[B]`` batch is one step, To = 1). Each
        image key's encoder runs once on the window's ``B * To`` frames (time folded into the batch)."""
        f = self.encoder(td)
        if f.dim() == 2:
            f = f.unsqueeze(1)
        if f.shape[1] != self.obs_horizon:
            raise ValueError(f"expected an observation window of To={self.obs_horizon} steps, got {f.shape[1]}")
        return f

    @property
    def action_bound(self) -> float | None:
        """Every sampled action lies in ``[-action_bound, action_bound]`` (the schedule's ``clip_sample``), None when
        the sampler does not clamp; training refuses un-normalized actions it cannot reach."""
        s = self.schedule
        return float(s.clip_sample_range) if s.clip_sample else None

    def denoise(self, x_t: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_t, t, cond)

    def forward(self, x_t: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_t, t, cond)

    @torch.no_grad()
    def predict_chunk(self, td, generator=None, noise: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                      prefix_at: int = 0) -> torch.Tensor:
        """``[B, Tp, A]`` actions sampled from Gaussian noise with the schedule's sampler (DDPM, DDIM, or the
        flow policy's Euler steps), given a
        ``[B, To]`` observation window (``[B]`` when To = 1). ``noise`` ``[1 + schedule.noise_draws(), B, Tp, A]``:
        every Gaussian draw of the loop, in the order it makes them (the initial sample, then one per DDPM step
        ``t > 0``), given instead of drawn; drawing them in that order from one generator gives the same chunk as
        passing the generator (exported policies take the noise as an input).

        ``prefix`` ``[B, P, A]``: actions already decided for chunk positions ``prefix_at .. prefix_at + P`` (those a
        robot executes while this chunk is computed); they are inpainted: after every sampling step those
        positions are reset to the prefix at the step's noise level (from the initial noise), so the rest of the
        chunk is sampled consistent with them, and the returned chunk holds them exactly (asynchronous execution,
        :mod:`modmimic.chunking`)."""
        cond = self.condition(td)
        B = cond.shape[0]
        if noise is None:
            x = torch.randn(B, self.prediction_horizon, self.ac_dim, generator=generator, device=cond.device,
                            dtype=cond.dtype)
        else:
            want = (1 + self.schedule.noise_draws(), B, self.prediction_horizon, self.ac_dim)
            if tuple(noise.shape) != want:
                raise ValueError(f"diffusion noise must have shape {want}, got {tuple(noise.shape)}")
            x = noise[0]
        if prefix is not None:
            known = slice(prefix_at, prefix_at + prefix.shape[1])
            if prefix.dim() != 3 or prefix.shape[0] != B or prefix.shape[2] != self.ac_dim or \
                    not 0 <= prefix_at < prefix_at + prefix.shape[1] <= self.prediction_horizon:
                raise ValueError(f"inpainting prefix of shape {tuple(prefix.shape)} at {prefix_at} does not fit a "
                                 f"[{B}, {self.prediction_horizon}, {self.ac_dim}] chunk")
            start = x[:, known].clone()
        i = 1
        for t in self.schedule.timesteps():
            eps = None
            if noise is not None and t > 0 and self.schedule.sampler == "ddpm":
                eps, i = noise[i], i + 1
            x = self.schedule.step(self.denoiser(x, t, cond), t, x, generator, noise=eps)
            if prefix is not None:
                x[:, known] = self.schedule.noised_after(prefix, start, t)
        if prefix is not None:
            x[:, known] = prefix
        return x


def diffusion_policy(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, denoiser: str = "unet",
                     horizon: dict | None = None, unet: dict | None = None, transformer: dict | None = None,
                     ddpm: dict | None = None, ddim: dict | None = None,
                     encoder: dict | None = None, task_dim: int | None = None,
                     task_fuse: str = "film") -> DiffusionPolicy:
    """Build a :class:`DiffusionPolicy` from robomimic's sections: ``horizon`` (observation/prediction horizons),
    ``unet`` (``diffusion_step_embed_dim``, ``down_dims``, ``kernel_size``, ``n_groups``), ``transformer`` (``n_layer``,
    ``n_head``, ``n_emb``, ``p_drop_emb``, ``p_drop_attn``, ``causal_attn``, ``n_cond_layers``), ``ddpm`` / ``ddim``.
    Goal observations, when the recipe has them, are encoded with each step's observation (robomimic drops them).

    ``encoder`` is the observation encoder spec (:func:`~modmimic.components.nets.core.encoder_spec`, filled in from
    the recipe's ``observation`` section): rgb / depth / scan keys get their modality's core (robomimic's
    ``ObservationGroupEncoder`` with its ReLU feature activation); the ``[B, To]`` window is encoded in one call per
    key on ``[B * To, ...]`` (time folded into the batch, robomimic's ``time_distributed``), each step's features
    concatenated over keys. The recipe's default ResNet uses GroupNorm (``use_group_norm``), as robomimic's
    ``replace_bn_with_gn``. ``task_dim``: a multi-task policy, each step's features conditioned on the task
    embedding (``task_fuse``: FiLM or concatenation, :class:`~modmimic.components.nets.film.TaskConditionedEncoder`)
    before they condition the denoiser."""
    enc, net, To, Tp = observation_encoder_and_denoiser(obs_shapes, ac_dim, goal_shapes, denoiser, horizon, unet,
                                                        transformer, encoder, task_dim, task_fuse)
    return DiffusionPolicy(enc, net, schedule_from_config(ddpm, ddim), To, Tp, ac_dim)


def observation_encoder_and_denoiser(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None,
                                     denoiser: str = "unet", horizon: dict | None = None, unet: dict | None = None,
                                     transformer: dict | None = None, encoder: dict | None = None,
                                     task_dim: int | None = None, task_fuse: str = "film"):
    """``(ObsEncoder, denoiser, To, Tp)`` from the recipe's sections (shared by Diffusion Policy and the flow policy,
    :func:`~modmimic.components.nets.flow.flow_policy`); with ``task_dim`` the encoder is task-conditioned."""
    h = dict(horizon or {})
    To, Tp = int(h.get("observation_horizon", 2)), int(h.get("prediction_horizon", 16))
    if To < 1 or Tp < 1:
        raise ValueError(f"observation_horizon ({To}) and prediction_horizon ({Tp}) must be >= 1")
    enc = ObsEncoder(group_inputs(obs_shapes, goal_shapes), encoder)
    if task_dim:
        enc = TaskConditionedEncoder(enc, task_dim, task_fuse)
    if denoiser == "unet":
        u = {k: v for k, v in dict(unet or {}).items() if k != "enabled"}
        net = ConditionalUnet1D(ac_dim, To * enc.output_dim, **u)
    elif denoiser == "transformer":
        tr = {k: v for k, v in dict(transformer or {}).items() if k != "enabled"}
        net = TransformerDenoiser(ac_dim, enc.output_dim, Tp, To, **tr)
    else:
        raise ValueError(f"unknown denoiser {denoiser!r}: expected 'unet' or 'transformer'")
    return enc, net, To, Tp
