"""Task conditioning of observation encoders (multi-task and language-conditioned policies).

* :func:`film` — Feature-wise Linear Modulation (Perez et al. 2018): ``gamma * x + beta``, per feature.
* :class:`FiLM` — ``gamma`` and ``beta`` predicted from a conditioning vector (a task embedding) by one linear layer,
  ``gamma = 1 + W_g c + b_g``, ``beta = W_b c + b_b``, initialised to zero so that an untrained layer is the
  identity (robomimic v0.5 conditions its visual encoders on a CLIP text embedding the same way, inside the conv
  trunk; here FiLM acts on every key's encoder features, which for a per-feature affine map is the same as one FiLM
  per key).
* :class:`TaskConditionedEncoder` — an observation encoder whose features are modulated (``fuse="film"``) by, or
  concatenated (``fuse="concat"``, robomimic's "feature input to the action head") with, the task embedding read
  from the batch at ``("task", "embedding")``.
"""
from __future__ import annotations

import torch
from torch import nn

from modmimic import keys as K

FUSE_MODES = ("film", "concat")


def film(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``gamma * x + beta`` (broadcast over leading dims)."""
    return gamma * x + beta


class FiLM(nn.Module):
    """``x [..., F]`` modulated by a conditioning vector ``c [..., C]`` (``c`` may lack ``x``'s time dim)."""

    def __init__(self, feature_dim: int, cond_dim: int):
        super().__init__()
        self.feature_dim, self.cond_dim = int(feature_dim), int(cond_dim)
        self.proj = nn.Linear(self.cond_dim, 2 * self.feature_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def gamma_beta(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d_gamma, beta = self.proj(c).chunk(2, dim=-1)
        return 1.0 + d_gamma, beta

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma_beta(_like(c, x))
        return film(x, gamma, beta)


def _like(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``c [B, C]`` expanded to ``x``'s leading dims ``[B, T, ...]`` (a per-episode embedding over a window)."""
    while c.dim() < x.dim():
        c = c.unsqueeze(1)
    return c.expand(*x.shape[:-1], c.shape[-1])


def task_embedding(td, task_dim: int, task_key=K.TASK_EMB) -> torch.Tensor:
    """``td[task_key]`` ``[..., task_dim]``, or a one-line error naming what a task-conditioned network needs."""
    try:
        c = td.get(task_key)
    except KeyError:
        raise KeyError(f"this policy is task-conditioned: the batch needs the task embedding {task_key} "
                       f"([..., {task_dim}])") from None
    if c.shape[-1] != task_dim:
        raise ValueError(f"task embedding of size {c.shape[-1]}, the policy was built for {task_dim}")
    return c


class TaskConditionedEncoder(nn.Module):
    """``encoder`` (an :class:`~modmimic.components.nets.core.ObsEncoder`) conditioned on the task embedding
    ``td[task_key]`` (``[..., task_dim]``): FiLM over its features, or the embedding concatenated to them."""

    def __init__(self, encoder: nn.Module, task_dim: int, fuse: str = "film", task_key=K.TASK_EMB):
        super().__init__()
        if fuse not in FUSE_MODES:
            raise ValueError(f"task fuse mode {fuse!r}: expected one of {FUSE_MODES}")
        if int(task_dim) < 1:
            raise ValueError(f"task_dim must be >= 1, got {task_dim}")
        self.encoder, self.task_dim, self.fuse, self.task_key = encoder, int(task_dim), fuse, task_key
        self.film = FiLM(encoder.output_dim, self.task_dim) if fuse == "film" else None
        self.in_keys = list(encoder.in_keys) + [task_key]
        self.output_dim = encoder.output_dim + (self.task_dim if fuse == "concat" else 0)

    def forward(self, td) -> torch.Tensor:
        x = self.encoder(td)
        c = task_embedding(td, self.task_dim, self.task_key).to(x.dtype)
        if self.film is not None:
            return self.film(x, c)
        return torch.cat([x, _like(c, x)], dim=-1)
