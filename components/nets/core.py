"""Building blocks: the observation encoder and the MLP.

Shapes are plain dicts passed at build time: ``obs_shapes = {obs key: shape}``, ``goal_shapes = {...}``. Networks
read their inputs from a TensorDict by nested key and accept any leading batch dims (``[B]`` or ``[B, T]``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from modmimic import keys as K


def group_inputs(obs_shapes: dict | None = None, goal_shapes: dict | None = None, goal_group: str = K.GOAL,
                 extra: dict | None = None) -> list:
    """``[(nested key, shape), ...]`` in robomimic's fixed order: obs keys sorted, then goal keys sorted
    (read from ``goal_group``, e.g. ``"subgoal"`` for an actor fed by a planner), then ``extra`` as given."""
    items = [(K.obs(k), tuple(s)) for k, s in sorted((obs_shapes or {}).items())]
    items += [((goal_group, k), tuple(s)) for k, s in sorted((goal_shapes or {}).items())]
    items += [(k if isinstance(k, tuple) else k, tuple(s)) for k, s in (extra or {}).items()]
    return items


class ObsEncoder(nn.Module):
    """Low-dim encoder: flattens every input entry and concatenates them in a fixed key order.

    ``inputs`` is a list of ``(nested key, shape)``; ``forward(td)`` returns ``[..., output_dim]`` where ``...`` are
    the TensorDict's leading dims. (robomimic's low_dim modality: identity core, concat.)
    """

    def __init__(self, inputs: Sequence):
        super().__init__()
        self.in_keys = [tuple(k) if isinstance(k, (tuple, list)) else k for k, _ in inputs]
        self.shapes = [tuple(s) for _, s in inputs]
        for k, s in zip(self.in_keys, self.shapes):
            if len(s) != 1:
                raise ValueError(f"ObsEncoder handles flat (low-dim) inputs; {k} has shape {s}")
        self.output_dim = sum(int(math.prod(s)) for s in self.shapes)

    def forward(self, td) -> torch.Tensor:
        parts = [td.get(k) for k in self.in_keys]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def encode(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The same from tensors given in ``in_keys`` order."""
        return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors), dim=-1)


def mlp(input_dim: int, output_dim: int, layer_dims: Sequence[int] = (), activation=nn.ReLU,
        output_activation=None, dropouts: Sequence[float] | None = None, layer_norm: bool = False) -> nn.Sequential:
    """robomimic's MLP: ``Linear`` layers of ``layer_dims`` with ``activation`` between them, a final ``Linear`` to
    ``output_dim`` (``output_dim=0`` leaves the last hidden layer as output) and an optional output activation."""
    layers, d = [], input_dim
    for i, h in enumerate(layer_dims):
        layers.append(nn.Linear(d, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(activation())
        if dropouts and dropouts[i] > 0:
            layers.append(nn.Dropout(dropouts[i]))
        d = h
    if output_dim:
        layers.append(nn.Linear(d, output_dim))
    if output_activation is not None:
        layers.append(output_activation())
    return nn.Sequential(*layers)


def mlp_output_dim(input_dim: int, output_dim: int, layer_dims: Sequence[int]) -> int:
    return output_dim or (layer_dims[-1] if layer_dims else input_dim)
