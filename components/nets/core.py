"""Building blocks: the observation encoder and the MLP.

Shapes are plain dicts passed at build time: ``obs_shapes = {obs key: shape}``, ``goal_shapes = {...}``. Networks
read their inputs from a TensorDict by nested key and accept any leading batch dims (``[B]`` or ``[B, T]``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.base import NO_DEFAULT
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


MODALITIES = ("low_dim", "rgb", "depth", "scan")


def process_obs(x: torch.Tensor, modality: str) -> torch.Tensor:
    """robomimic's ``process_obs`` on ``[N, *raw shape]``: rgb ``uint8 [N, H, W, C]`` -> ``float [N, C, H, W] / 255``
    (clipped to [0, 1]); depth ``[N, H, W, 1]`` -> ``float [N, 1, H, W]`` unscaled (robomimic's robosuite
    processing: metric depth, no clip); scan ``[N, L, C]`` -> ``float [N, C, L]``; low_dim unchanged."""
    if modality == "rgb":
        y = x.float() / 255.0
        if x.dtype != torch.uint8:
            y = y.clamp(0.0, 1.0)
        return y.permute(0, 3, 1, 2)
    if modality == "depth":
        return x.float().permute(0, 3, 1, 2)
    if modality == "scan":
        return x.float().transpose(1, 2)
    return x


def processed_shape(shape: tuple, modality: str) -> tuple:
    """The shape :func:`process_obs` gives one raw observation of ``shape``."""
    if modality in ("rgb", "depth"):
        if len(shape) != 3:
            raise ValueError(f"{modality} observations are [H, W, C]; got shape {shape}")
        return (shape[2], shape[0], shape[1])
    if modality == "scan":
        if len(shape) != 2:
            raise ValueError(f"scan observations are [L, C]; got shape {shape}")
        return (shape[1], shape[0])
    return tuple(shape)


def encoder_spec(observation: dict | None) -> dict | None:
    """The one ``encoder`` spec networks take, from a config's plain ``observation`` section:
    ``{"modalities": {obs key: modality}, "encoder": observation.encoder}`` over the obs, goal and subgoal groups.
    A key listed under two modalities is an error; a key in no list is low-dim. None without an ``observation``
    section. With only low-dim keys the networks build exactly the parameter-free flat encoder they always had."""
    if not observation:
        return None
    mods = {}
    for group, by_mod in (observation.get("modalities") or {}).items():
        for mod, keys in (by_mod or {}).items():
            for k in keys or []:
                if mods.setdefault(k, mod) != mod:
                    raise ValueError(f"observation key {k!r} is listed under two modalities ({mods[k]!r} and {mod!r}, "
                                     f"observation.modalities.{group}.{mod})")
    enc = dict(observation.get("encoder") or {})
    for mod in set(mods.values()):
        if mod not in MODALITIES:
            raise ValueError(f"unknown observation modality {mod!r}: expected one of {MODALITIES}")
    return {"modalities": mods, "encoder": enc}


def _as_list(v):
    return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]


class KeyEncoder(nn.Module):
    """One observation key of a non-low-dim modality (robomimic ``ObservationEncoder``'s per-key path):
    ``process_obs`` -> randomizers' ``forward_in`` -> core -> feature activation -> randomizers' ``forward_out``
    (reverse order) -> flatten. Any leading dims: ``[..., *raw shape]`` -> ``[..., output_dim]``."""

    def __init__(self, modality: str, raw_shape: tuple, core: nn.Module, randomizers: Sequence[nn.Module] = (),
                 activation: nn.Module | None = None):
        super().__init__()
        self.modality, self.raw_shape = modality, tuple(raw_shape)
        self.core, self.randomizers, self.activation = core, nn.ModuleList(randomizers), activation
        self.output_dim = int(math.prod(core.output_shape()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.raw_shape)
        if tuple(x.shape[x.dim() - nd:]) != self.raw_shape:
            raise ValueError(f"{self.modality} observation of shape {tuple(x.shape)} does not end with the "
                             f"{self.raw_shape} the encoder was built for")
        lead = x.shape[:x.dim() - nd]
        y = process_obs(x.reshape(-1, *self.raw_shape), self.modality)
        for r in self.randomizers:
            y = r.forward_in(y)
        y = self.core(y)
        if self.activation is not None:
            y = self.activation(y)
        for r in reversed(self.randomizers):
            y = r.forward_out(y)
        return y.reshape(*lead, self.output_dim)


def _randomizers(block: dict, shape: tuple, where: str) -> list:
    from modmimic.components.nets.randomizers import RANDOMIZERS
    from modmimic.components.nets.vision import make

    classes = _as_list(block.get("obs_randomizer_class"))
    kwargs = block.get("obs_randomizer_kwargs")
    if isinstance(kwargs, (list, tuple)):
        if len(kwargs) != len(classes):
            raise ValueError(f"{where}: obs_randomizer_class lists {len(classes)} randomizers but "
                             f"obs_randomizer_kwargs lists {len(kwargs)}")
        kwargs = list(kwargs)
    else:
        if len(classes) > 1 and kwargs:
            raise ValueError(f"{where}: a chain of randomizers {classes} needs obs_randomizer_kwargs as a list, one "
                             "dict per randomizer")
        kwargs = [kwargs] * len(classes)
    out = []
    for name, kw in zip(classes, kwargs):
        try:
            r = make(RANDOMIZERS, name, shape, kw, "obs_randomizer_class")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        shape = r.output_shape_in(shape)
        out.append(r)
    return out


def build_key_encoder(key, raw_shape: tuple, modality: str, block: dict, activation, share_core=None) -> KeyEncoder:
    """``KeyEncoder`` for ``key`` from its modality's ``observation.encoder.<modality>`` block; ``share_core``: the
    core of another key to use instead of a new one (``share_net_from``)."""
    from modmimic.components.nets.vision import CORES, make

    where = f"observation.encoder.{modality} (key {key[-1] if isinstance(key, tuple) else key!r})"
    shape = processed_shape(tuple(raw_shape), modality)
    rands = _randomizers(block, shape, where)
    core_in = rands[-1].output_shape_in(rands[-1].input_shape) if rands else shape
    if share_core is not None:
        core = share_core
    else:
        if block.get("core_class") is None:
            raise ValueError(f"{where}: core_class is null; {modality} observations need a core (e.g. VisualCore)")
        try:
            core = make(CORES, block["core_class"], core_in, block.get("core_kwargs"), "core_class")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
    return KeyEncoder(modality, raw_shape, core, rands, activation() if activation is not None else None)


class ObsEncoder(nn.Module):
    """robomimic's ``ObservationEncoder`` over TensorDict entries: one path per input in a fixed key order,
    concatenated to ``[..., output_dim]`` (``...``: the TensorDict's leading dims).

    ``inputs`` is a list of ``(nested key, raw shape)``. ``encoder`` (see :func:`encoder_spec`) gives each key's
    modality and the per-modality ``observation.encoder`` blocks; without it every key is low-dim. Low-dim keys are
    read as they are (robomimic's low_dim: no core) and hold no parameters; rgb / depth / scan keys go through a
    :class:`KeyEncoder` (``feature_activation`` after the core: ReLU, as robomimic; None for the transformer).
    ``observation.encoder.<modality>.share_net_from = {key: other key}`` makes ``key`` use ``other key``'s core
    (same group). Goal-group keys get their own cores, as robomimic's group encoders.
    """

    def __init__(self, inputs: Sequence, encoder: dict | None = None, feature_activation=nn.ReLU):
        super().__init__()
        self.in_keys = [tuple(k) if isinstance(k, (tuple, list)) else k for k, _ in inputs]
        self.shapes = [tuple(s) for _, s in inputs]
        mods = (encoder or {}).get("modalities") or {}
        blocks = (encoder or {}).get("encoder") or {}
        self.modalities = [mods.get(k[-1] if isinstance(k, tuple) else k, "low_dim") for k in self.in_keys]
        self.key_encoders = nn.ModuleDict()
        self._names = []
        dims = []
        for k, s, mod in zip(self.in_keys, self.shapes, self.modalities):
            if mod == "low_dim":
                if len(s) != 1:
                    raise ValueError(f"low-dim observation {k} has shape {s}; list an image key under "
                                     "observation.modalities.obs.rgb (or depth / scan)")
                if (blocks.get("low_dim") or {}).get("core_class") is not None:
                    raise ValueError("observation.encoder.low_dim.core_class must be null (low-dim keys are read as "
                                     "they are)")
                self._names.append(None)
                dims.append(int(math.prod(s)))
                continue
            block = dict(blocks.get(mod) or {})
            share = (block.get("share_net_from") or {}).get(k[-1] if isinstance(k, tuple) else k)
            src = None
            if share is not None:
                src_key = (k[0], share) if isinstance(k, tuple) else share
                if _name(src_key) not in self.key_encoders:
                    raise ValueError(f"observation.encoder.{mod}.share_net_from: {k[-1]!r} shares the core of "
                                     f"{share!r}, which is not an earlier {mod} key of its group "
                                     f"(keys in order: {self.in_keys})")
                src = self.key_encoders[_name(src_key)].core
            ke = build_key_encoder(k, s, mod, block, feature_activation, src)
            self.key_encoders[_name(k)] = ke
            self._names.append(_name(k))
            dims.append(ke.output_dim)
        self.output_dim = sum(dims)
        groups = {k[0] if isinstance(k, tuple) and len(k) == 2 else None for k in self.in_keys}
        self._group = groups.pop() if len(groups) == 1 else None  # e.g. every key is ("observation", name)
        self._leaves = [k[-1] for k in self.in_keys] if self._group is not None else None

    def forward(self, td) -> torch.Tensor:
        if self._group is not None and isinstance(td, TensorDictBase):  # one group: look it up once
            return self.encode(read_leaves(td, self._group, self._leaves))
        return self.encode([td.get(k) for k in self.in_keys])

    def encode(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The same from tensors given in ``in_keys`` order."""
        parts = [x if name is None else self.key_encoders[name](x) for x, name in zip(tensors, self._names)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def read_leaves(td: TensorDictBase, group: str, leaves: Sequence[str]) -> list:
    """``[td[group][k] for k in leaves]`` by tensordict's direct lookup of a string key (``get`` parses the key and
    its default first: ~0.6 us a key, and a training step reads a few dozen); a missing key raises ``KeyError``
    naming it and the keys there are."""
    g = td._get_str(group, NO_DEFAULT)
    return [g._get_str(k, NO_DEFAULT) for k in leaves]


def _name(key) -> str:
    return "/".join(key) if isinstance(key, tuple) else str(key)


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
