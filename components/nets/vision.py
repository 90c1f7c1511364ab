"""Image (and scan) encoder cores: backbones, pools and robomimic's ``VisualCore`` / ``ScanCore``.

Every module takes its processed input shape (``(C, H, W)``; ``(C, L)`` for scans) first and reports
``output_shape``; ``forward`` takes ``[N, C, H, W]``. Names match robomimic's config values
(``backbone_class: ResNet18Conv``, ``pool_class: SpatialSoftmax`` ...); they resolve through the tables at the end of
this file only (a config never names arbitrary code).

* :class:`ResNet18Conv` — ResNet-18 without its average pool and classifier (torchvision's layer names, so a
  torchvision ``resnet18`` state_dict loads into it); ``input_coord_conv`` makes the first conv a
  :class:`CoordConv2d`; ``use_group_norm`` puts ``GroupNorm(C // 16, C)`` in place of every BatchNorm (Diffusion
  Policy); ``pretrained`` is the path of a local state_dict (nothing is downloaded).
* :class:`ShallowConv` — robomimic's small four-conv backbone for small images.
* :class:`SpatialSoftmax` — 1x1 conv to ``num_kp`` maps, softmax over pixels, expected ``(x, y)`` in ``[-1, 1]``.
* :class:`SpatialMeanPool` — mean over pixels.
* :class:`VisualCore` — backbone -> pool (optional) -> flatten -> ``Linear(feature_dimension)`` (optional).
* :class:`ScanCore` — 1-D conv stack -> flatten -> ``Linear(feature_dimension)`` (optional).
"""
from __future__ import annotations

import inspect
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution / pooling along one dimension."""
    return (size + 2 * padding - kernel) // stride + 1


def position_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[2, h, w]``: row index / h and column index / w (robomimic's position channels, ``(y, x)`` order)."""
    ys = torch.arange(h, device=device, dtype=dtype) / h
    xs = torch.arange(w, device=device, dtype=dtype) / w
    return torch.stack([ys[:, None].expand(h, w), xs[None, :].expand(h, w)])


class CoordConv2d(nn.Conv2d):
    """A conv whose input gets two extra channels: each pixel's row / H and column / W (CoordConv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__(in_channels + 2, out_channels, kernel_size, stride, padding, bias=bias)

    def forward(self, x):
        n, _, h, w = x.shape
        pos = position_grid(h, w, x.device, x.dtype).unsqueeze(0).expand(n, 2, h, w)
        return super().forward(torch.cat([x, pos], dim=1))


def _norm(use_group_norm: bool):
    return (lambda c: nn.GroupNorm(c // 16, c)) if use_group_norm else nn.BatchNorm2d


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with norms, a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18Conv(nn.Module):
    """ResNet-18 conv trunk: ``[N, C, H, W]`` -> ``[N, 512, H', W']`` (``H' = 3`` for 84 and for 76)."""

    def __init__(self, input_shape: Sequence[int], pretrained=False, input_coord_conv: bool = False,
                 use_group_norm: bool = False):
        super().__init__()
        c = int(input_shape[0])
        self.input_shape = tuple(int(s) for s in input_shape)
        norm = _norm(use_group_norm)
        conv = CoordConv2d if input_coord_conv else nn.Conv2d
        self.conv1 = conv(c, 64, 7, 2, 3, bias=False)
        self.bn1 = norm(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin, layers = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride, norm), BasicBlock(w, w, 1, norm)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if pretrained:
            self._load_pretrained(pretrained, fresh_conv1=input_coord_conv or c != 3, group_norm=use_group_norm)

    def _load_pretrained(self, pretrained, fresh_conv1: bool, group_norm: bool) -> None:
        if pretrained is True or not isinstance(pretrained, (str, os.PathLike)):
            raise ValueError("ResNet18Conv pretrained=true needs ImageNet weights, which modmimic never downloads: set "
                             "backbone_kwargs.pretrained to the path of a local torchvision resnet18 state_dict file")
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise ValueError(f"ResNet18Conv pretrained weights file not found: {path}")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise ValueError(f"cannot read {path} as a tensor state_dict (weights_only): {type(e).__name__}: {e}") \
                from None
        if not isinstance(sd, dict):
            raise ValueError(f"{path} holds a {type(sd).__name__}, not a resnet18 state_dict")
        drop = ("fc.",) + (("conv1.",) if fresh_conv1 else ())
        sd = {k: v for k, v in sd.items() if not k.startswith(drop)
              and not (group_norm and k.endswith(("running_mean", "running_var", "num_batches_tracked")))}
        own = self.state_dict()
        missing = [k for k in own if k not in sd and not (fresh_conv1 and k.startswith("conv1."))]
        unexpected = [k for k in sd if k not in own]
        bad = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad:
            raise ValueError(f"{path} is not a resnet18 state_dict for this trunk: missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}, wrong shapes {bad[:4]}")
        self.load_state_dict(sd, strict=False)

    def output_shape(self, input_shape=None) -> tuple:
        _, h, w = input_shape or self.input_shape
        for k, s, p in ((7, 2, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1), (3, 2, 1)):  # conv1, maxpool, layer2..4
            h, w = conv_out(h, k, s, p), conv_out(w, k, s, p)
        return (512, h, w)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ShallowConv(nn.Module):
    """robomimic ``ShallowConv``: conv7x7/2 (64) - ReLU - conv1x1 (32) - ReLU - conv3x3/2 (32) - ReLU - conv3x3 (32).

    ``use_group_norm`` (modmimic) puts ``GroupNorm(C // 16, C)`` before each of the first three ReLUs. Without it the
    trunk's default initialisation shrinks [0, 1] pixels to features of std ~0.06, which leaves a following
    ``SpatialSoftmax`` nearly uniform over its map (docs/sim_figures.md, "Pixels")."""

    def __init__(self, input_shape: Sequence[int], output_channel: int = 32, use_group_norm: bool = False):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_channel = int(output_channel)

        def act(c):
            return [nn.GroupNorm(max(1, c // 16), c), nn.ReLU()] if use_group_norm else [nn.ReLU()]

        self.nets = nn.Sequential(
            nn.Conv2d(self.input_shape[0], 64, 7, 2, 3), *act(64),
            nn.Conv2d(64, 32, 1), *act(32),
            nn.Conv2d(32, 32, 3, 2, 1), *act(32),
            nn.Conv2d(32, self.output_channel, 3, 1, 1))

    def output_shape(self, input_shape=None) -> tuple:
        _, h, w = input_shape or self.input_shape
        for k, s, p in ((7, 2, 3), (3, 2, 1)):
            h, w = conv_out(h, k, s, p), conv_out(w, k, s, p)
        return (self.output_channel, h, w)

    def forward(self, x):
        return self.nets(x)


class SpatialSoftmax(nn.Module):
    """Keypoints from feature maps (robomimic ``SpatialSoftmax``).

    A 1x1 conv maps ``C`` channels to ``num_kp`` maps (``num_kp=None``: the channels themselves); each map is
    softmaxed over its pixels at ``temperature`` (a learnable parameter with ``learnable_temperature``) and gives its
    expected ``(x, y)`` with x, y on ``linspace(-1, 1)`` over columns and rows -> ``[N, K, 2]``. In training,
    ``noise_std`` adds Gaussian noise to the keypoints. ``output_variance`` appends each keypoint's covariance
    ``(var_x, cov_xy, cov_xy, var_y)`` -> ``[N, K, 6]`` (robomimic returns it as a separate tensor that its own
    VisualCore cannot flatten).
    """

    def __init__(self, input_shape: Sequence[int], num_kp: int | None = 32, temperature: float = 1.0,
                 learnable_temperature: bool = False, output_variance: bool = False, noise_std: float = 0.0):
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        self.input_shape = (c, h, w)
        self.nets = nn.Conv2d(c, int(num_kp), 1) if num_kp is not None else None
        self.num_kp = int(num_kp) if num_kp is not None else c
        if learnable_temperature:
            self.temperature = nn.Parameter(torch.ones(1) * float(temperature))
        else:
            self.register_buffer("temperature", torch.ones(1) * float(temperature))
        self.output_variance, self.noise_std = bool(output_variance), float(noise_std)
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, h), torch.linspace(-1.0, 1.0, w), indexing="ij")
        self.register_buffer("pos_x", xs.reshape(1, h * w), persistent=False)
        self.register_buffer("pos_y", ys.reshape(1, h * w), persistent=False)

    def output_shape(self, input_shape=None) -> tuple:
        return (self.num_kp, 6 if self.output_variance else 2)

    def forward(self, x):
        if self.nets is not None:
            x = self.nets(x)
        n = x.shape[0]
        att = torch.softmax(x.reshape(n * self.num_kp, -1) / self.temperature, dim=-1)
        ex = (att * self.pos_x).sum(-1, keepdim=True)
        ey = (att * self.pos_y).sum(-1, keepdim=True)
        kp = torch.cat([ex, ey], dim=-1).view(n, self.num_kp, 2)
        if self.training and self.noise_std > 0:
            kp = kp + torch.randn_like(kp) * self.noise_std
        if not self.output_variance:
            return kp
        exx = (att * self.pos_x * self.pos_x).sum(-1, keepdim=True)
        eyy = (att * self.pos_y * self.pos_y).sum(-1, keepdim=True)
        exy = (att * self.pos_x * self.pos_y).sum(-1, keepdim=True)
        vx, vy, cxy = exx - ex * ex, eyy - ey * ey, exy - ex * ey
        cov = torch.cat([vx, cxy, cxy, vy], dim=-1).view(n, self.num_kp, 4)
        return torch.cat([kp, cov], dim=-1)


class SpatialMeanPool(nn.Module):
    """``[N, C, H, W]`` -> ``[N, C]``: the mean over pixels."""

    def __init__(self, input_shape: Sequence[int]):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)

    def output_shape(self, input_shape=None) -> tuple:
        return ((input_shape or self.input_shape)[0],)

    def forward(self, x):
        return x.mean(dim=(2, 3))


BACKBONES = {"ResNet18Conv": ResNet18Conv, "ShallowConv": ShallowConv}
POOLS = {"SpatialSoftmax": SpatialSoftmax, "SpatialMeanPool": SpatialMeanPool}


def accepted(cls) -> set:
    return {n for n, p in inspect.signature(cls).parameters.items() if n != "input_shape"
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def make(table: dict, name: str, input_shape, kwargs: dict | None, what: str):
    """``table[name](input_shape, **kwargs)`` (``name`` may also be a class: a user's, resolved from a dotted path by
    the application). Like robomimic, kwargs that ``name`` does not take but another entry
    of ``table`` does are left out (defaults of the other choice, e.g. ``pretrained`` for ``ShallowConv``); a kwarg
    no entry takes is an error naming it."""
    if not isinstance(name, str) and callable(name):  # a user's class (resolved by the application)
        table = {**table, getattr(name, "__qualname__", str(name)): name}
        name = getattr(name, "__qualname__", str(name))
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}: expected one of {sorted(table)} or a class by dotted path "
                         "(mypkg.module.Class)")
    cls, kwargs = table[name], dict(kwargs or {})
    mine, known = accepted(cls), set().union(*(accepted(c) for c in table.values()))
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        raise ValueError(f"{what} {name}: unknown kwargs {unknown}; it takes {sorted(mine)}")
    return cls(tuple(input_shape), **{k: v for k, v in kwargs.items() if k in mine})


class VisualCore(nn.Module):
    """robomimic ``VisualCore``: backbone -> pool (``pool_class=None``: none) -> flatten -> ``Linear`` to
    ``feature_dimension`` (None: no projection). ``[N, C, H, W]`` -> ``[N, D]`` (or the unflattened pool output)."""

    def __init__(self, input_shape: Sequence[int], backbone_class: str = "ResNet18Conv",
                 pool_class: str | None = "SpatialSoftmax", backbone_kwargs: dict | None = None,
                 pool_kwargs: dict | None = None, flatten: bool = True, feature_dimension: int | None = 64):
        super().__init__()
        if feature_dimension is not None and not flatten:
            raise ValueError("VisualCore: feature_dimension needs flatten=true")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.backbone = make(BACKBONES, backbone_class, self.input_shape, backbone_kwargs, "backbone_class")
        shape = self.backbone.output_shape(self.input_shape)
        self.pool = None
        if pool_class is not None:
            self.pool = make(POOLS, pool_class, shape, pool_kwargs, "pool_class")
            shape = self.pool.output_shape(shape)
        self.flatten = bool(flatten)
        self.linear = None
        if feature_dimension is not None:
            self.linear = nn.Linear(math.prod(shape), int(feature_dimension))
            shape = (int(feature_dimension),)
        elif flatten:
            shape = (math.prod(shape),)
        self._output_shape = tuple(shape)

    def output_shape(self, input_shape=None) -> tuple:
        return self._output_shape

    def forward(self, x):
        x = self.backbone(x)
        if self.pool is not None:
            x = self.pool(x)
        if self.flatten:
            x = x.flatten(1)
        return x if self.linear is None else self.linear(x)


_ACTIVATIONS = {"relu": nn.ReLU, "none": None, None: None}


class ScanCore(nn.Module):
    """robomimic ``ScanCore`` without its pool: a ``Conv1d`` stack (``conv_kwargs`` lists ``out_channels``,
    ``kernel_size``, ``stride``), ``conv_activation`` between layers, flatten, ``Linear`` to ``feature_dimension``."""

    def __init__(self, input_shape: Sequence[int], conv_kwargs: dict | None = None, conv_activation: str = "relu",
                 flatten: bool = True, feature_dimension: int | None = 64):
        super().__init__()
        ck = {"out_channels": (32, 64, 64), "kernel_size": (8, 4, 2), "stride": (4, 2, 1), **dict(conv_kwargs or {})}
        if conv_activation not in _ACTIVATIONS:
            raise ValueError(f"ScanCore conv_activation must be 'relu' or None, got {conv_activation!r}")
        c, length = (int(s) for s in input_shape)
        layers = []
        for oc, k, s in zip(ck["out_channels"], ck["kernel_size"], ck["stride"]):
            layers.append(nn.Conv1d(c, int(oc), int(k), int(s)))
            if _ACTIVATIONS[conv_activation] is not None:
                layers.append(_ACTIVATIONS[conv_activation]())
            c, length = int(oc), conv_out(length, int(k), int(s))
        if length < 1:
            raise ValueError(f"ScanCore: a scan of shape {tuple(input_shape)} is too short for its convs")
        self.nets = nn.Sequential(*layers)
        self.linear = nn.Linear(c * length, int(feature_dimension)) if feature_dimension is not None else None
        self._output_shape = (int(feature_dimension),) if feature_dimension is not None else (c * length,)

    def output_shape(self, input_shape=None) -> tuple:
        return self._output_shape

    def forward(self, x):
        x = self.nets(x).flatten(1)
        return x if self.linear is None else self.linear(x)


CORES = {"VisualCore": VisualCore, "ScanCore": ScanCore}
