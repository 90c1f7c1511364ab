"""Value networks of the offline-RL recipes (robomimic ``value_nets.py`` and the BCQ perturbation actor).

Every network reads its state from a TensorDict (``("observation", k)`` and ``("goal", k)``) through an
:class:`ObsEncoder`, so the same network evaluates the next state when given ``batch["next"]`` (the transition batch
keeps the goal there too, see :func:`modmimic.components.batching.n_step_transition`).

* :class:`ValueNet` — ``V(s)`` ``[..., 1]`` (IQL's ``vf``).
* :class:`QEnsemble` — ``N`` independent ``Q_i(s, a)`` MLPs over ``cat(state features, action)``; ``forward`` returns
  ``[N, ..., 1]``. The state features are computed once for all members and the members run in a Python loop
  (faster than ``vmap`` on CPU). ``action`` may carry extra sample dims (``[B, n, A]`` for ``n`` candidate actions
  per state): the state features are broadcast, never tiled through the TensorDict.
* :class:`DistributionalQ` — C51 critic: logits over ``num_atoms`` atoms ``linspace(*value_bounds)``; ``forward``
  gives the expected value ``[1, ..., 1]`` so it plugs in wherever an ensemble does.
* :class:`PerturbationActor` — BCQ's ``a + scale * tanh(MLP(s, a))`` clamped to ``[-1, 1]``.
* :class:`Scalar` — a learnable scalar (log entropy weight, log CQL weight) that recipes declare as a network so it
  gets its own optimizer.

``value_bounds = (lo, hi)`` squashes a scalar output to ``(lo + hi) / 2 + (hi - lo) / 2 * tanh(x)`` (robomimic).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from modmimic.components.nets.core import ObsEncoder, group_inputs, mlp


def _bounds(value_bounds):
    if value_bounds is None:
        return None
    lo, hi = (float(v) for v in value_bounds)
    if not hi > lo:
        raise ValueError(f"value_bounds must be (low, high) with low < high, got {tuple(value_bounds)}")
    return (lo + hi) / 2.0, (hi - lo) / 2.0


def _squash(x, bounds):
    return x if bounds is None else bounds[0] + bounds[1] * torch.tanh(x)


def _state_action(features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``cat(features, action)``; features ``[B, D]`` are broadcast over extra sample dims of ``action``."""
    if action.dim() > features.dim():
        shape = action.shape[:-1]
        for _ in range(action.dim() - features.dim()):
            features = features.unsqueeze(-2)
        features = features.expand(*shape, features.shape[-1])
    return torch.cat([features, action], dim=-1)


class ValueNet(nn.Module):
    def __init__(self, obs_shapes: dict, goal_shapes: dict | None = None, layer_dims: Sequence[int] = (300, 400),
                 value_bounds=None, encoder: dict | None = None):
        super().__init__()
        self.encoder = ObsEncoder(group_inputs(obs_shapes, goal_shapes), encoder)
        self.net = mlp(self.encoder.output_dim, 1, layer_dims)
        self.bounds = _bounds(value_bounds)

    def forward(self, td) -> torch.Tensor:
        return _squash(self.net(self.encoder(td)), self.bounds)


STACKED_MAX_ROWS = 512  # from this many input rows on, QEnsemble runs one GEMM per member (see QEnsemble._mlp)


class StackedLinear(nn.Module):
    """``N`` independent linear layers as one: ``weight [N, in, out]``, ``bias [N, 1, out]``; ``forward(x)`` maps
    ``[N, M, in]`` (or a shared ``[M, in]``) to ``[N, M, out]`` with one ``baddbmm``."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([l.weight.detach().t() for l in linears]).contiguous())
        self.bias = nn.Parameter(torch.stack([l.bias.detach() for l in linears]).unsqueeze(1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)

    def member(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``i`` alone on ``[M, in]`` (one ``addmm`` on views of the stacked parameters)."""
        return torch.addmm(self.bias[i], x, self.weight[i])


class StackedLayerNorm(nn.Module):
    """``N`` LayerNorms as one: ``weight``/``bias`` ``[N, 1, dim]``; ``forward`` on ``[N, M, dim]``."""

    def __init__(self, norms: Sequence[nn.LayerNorm]):
        super().__init__()
        self.dim, self.eps = norms[0].normalized_shape, norms[0].eps
        self.weight = nn.Parameter(torch.stack([n.weight.detach() for n in norms]).unsqueeze(1).contiguous())
        self.bias = nn.Parameter(torch.stack([n.bias.detach() for n in norms]).unsqueeze(1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, self.dim, eps=self.eps) * self.weight + self.bias

    def member(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, self.dim, self.weight[i, 0], self.bias[i, 0], self.eps)


class QEnsemble(nn.Module):
    """``N`` Q MLPs over ``cat(state features, action)`` evaluated together: each layer's weights are stacked
    ``[N, in, out]`` and run as one batched matmul, the encoder is shared. Parameters are drawn as ``N`` independent
    :func:`~modmimic.components.nets.core.mlp` in a row (the RNG order of a list of member MLPs), so seeded runs are
    those of separate critics. ``member(i)`` gives a copy of member ``i`` as a plain ``nn.Sequential``;
    :meth:`clip_grad_norm_per_member_` clips each member's gradient on its own (robomimic steps every critic with its
    own optimizer). State dict: ``layers.<j>.weight [N, in, out]``, ``layers.<j>.bias [N, 1, out]``; with
    ``layer_norm`` (ReBRAC's critics) a LayerNorm after every hidden linear layer, before its ReLU
    (``norms.<j>.weight`` / ``.bias`` ``[N, 1, out]``)."""

    def __init__(self, obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None,
                 layer_dims: Sequence[int] = (300, 400), n: int = 2, value_bounds=None,
                 encoder: dict | None = None, layer_norm: bool = False):
        super().__init__()
        if n < 1:
            raise ValueError(f"a Q ensemble needs at least one member, got n={n}")
        self.encoder = ObsEncoder(group_inputs(obs_shapes, goal_shapes), encoder)
        if any(True for _ in self.encoder.parameters()):
            raise ValueError("QEnsemble shares one parameter-free (low-dim) encoder among its members; with image "
                             "encoders use EncodedQEnsemble (q_ensemble chooses it)")
        self.n, self.layer_dims, self.layer_norm = n, tuple(layer_dims), bool(layer_norm)
        self.input_dim = self.encoder.output_dim + ac_dim
        members = [mlp(self.input_dim, 1, layer_dims, layer_norm=self.layer_norm) for _ in range(n)]
        linears = [[m for m in member if isinstance(m, nn.Linear)] for member in members]
        self.layers = nn.ModuleList(StackedLinear([ls[j] for ls in linears]) for j in range(len(linears[0])))
        norms = [[m for m in member if isinstance(m, nn.LayerNorm)] for member in members]
        self.norms = nn.ModuleList(StackedLayerNorm([ns[j] for ns in norms]) for j in range(len(norms[0]))) \
            if self.layer_norm else None
        self.bounds = _bounds(value_bounds)

    def _member_mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``i`` on ``[M, in]`` -> ``[M, 1]`` (``addmm`` on views of the stacked parameters)."""
        last = len(self.layers) - 1
        for j, layer in enumerate(self.layers):
            x = layer.member(i, x)
            if j < last:
                x = torch.relu_(x if self.norms is None else self.norms[j].member(i, x))
        return x

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, in]`` -> ``[N, M, 1]``: one ``baddbmm`` per layer for all members; for tall inputs (``M >=
        STACKED_MAX_ROWS``, e.g. CQL's ``B * 30`` candidates) one ``addmm`` per member on views of the same stacked
        weights, as a CPU GEMM per member beats the batched one there (measured: ~10 % at 1 024-30 720 rows, while
        the batched op wins ~7 % at 100 rows). The ReLU runs in place on the fresh matmul output (its backward needs
        only its result): one large allocation less per layer."""
        if x.shape[0] >= STACKED_MAX_ROWS:
            return torch.stack([self._member_mlp(i, x) for i in range(self.n)])
        last = len(self.layers) - 1
        for j, layer in enumerate(self.layers):
            x = layer(x)
            if j < last:
                x = torch.relu_(x if self.norms is None else self.norms[j](x))
        return x

    def forward(self, td, action: torch.Tensor) -> torch.Tensor:
        """``[N, *action.shape[:-1], 1]``: every member's ``Q(s, a)``."""
        x = _state_action(self.encoder(td), action)
        q = self._mlp(x.reshape(-1, x.shape[-1]))
        return _squash(q, self.bounds).view(self.n, *x.shape[:-1], 1)

    def q1(self, td, action: torch.Tensor) -> torch.Tensor:
        """The first member only (robomimic scores actions with ``critic[0]``): ``[*action.shape[:-1], 1]``."""
        x = _state_action(self.encoder(td), action)
        q = self._member_mlp(0, x.reshape(-1, x.shape[-1]))
        return _squash(q, self.bounds).view(*x.shape[:-1], 1)

    # --- per-member views ------------------------------------------------------------------------------------
    def member_state_dict(self, i: int) -> dict:
        """Member ``i``'s parameters under :func:`mlp`'s names (``"0.weight" [out, in]``, ``"0.bias"``, ...)."""
        out, k = {}, 0
        for j, layer in enumerate(self.layers):
            out[f"{k}.weight"] = layer.weight[i].t()
            out[f"{k}.bias"] = layer.bias[i, 0]
            if self.norms is not None and j < len(self.norms):
                out[f"{k + 1}.weight"] = self.norms[j].weight[i, 0]
                out[f"{k + 1}.bias"] = self.norms[j].bias[i, 0]
                k += 1
            k += 2
        return out

    def member(self, i: int) -> nn.Sequential:
        """A copy of member ``i`` as the plain MLP it equals (``Linear``/``ReLU`` layers, ``LayerNorm`` with
        ``layer_norm``)."""
        m = mlp(self.input_dim, 1, self.layer_dims, layer_norm=self.layer_norm).to(self.layers[0].weight.device)
        with torch.no_grad():
            m.load_state_dict({k: v.detach().clone() for k, v in self.member_state_dict(i).items()})
        return m

    @torch.no_grad()
    def clip_grad_norm_per_member_(self, max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` applied to each member's gradients separately: ``[N]`` norms before
        clipping (each member's slice of every stacked gradient, scaled by ``min(1, max_norm / (norm + 1e-6))``)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(self.n)
        per_param = torch.stack([g.reshape(self.n, -1).norm(dim=1) for g in grads])  # [P, N]
        norms = per_param.norm(dim=0)
        coef = (float(max_norm) / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
        return norms


class EncodedMember(nn.Module):
    """One ensemble member with its own observation encoder: ``net(cat(encoder(td), action))``."""

    def __init__(self, encoder: ObsEncoder, net: nn.Module):
        super().__init__()
        self.encoder, self.net = encoder, net

    def forward(self, td, action: torch.Tensor) -> torch.Tensor:
        return self.net(_state_action(self.encoder(td), action))


class EncodedQEnsemble(nn.Module):
    """A Q ensemble whose observation encoder has parameters (images): every member is an :class:`EncodedMember` with
    its own encoder, as robomimic's ensemble of independent critics (so ``clip_per_member`` clips each critic's
    encoder with its MLP). ``forward`` ``[N, *action.shape[:-1], 1]``; ``q1`` the first member."""

    def __init__(self, obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None,
                 layer_dims: Sequence[int] = (300, 400), n: int = 2, value_bounds=None,
                 encoder: dict | None = None, layer_norm: bool = False):
        super().__init__()
        if n < 1:
            raise ValueError(f"a Q ensemble needs at least one member, got n={n}")
        inputs = group_inputs(obs_shapes, goal_shapes)
        self.bounds = _bounds(value_bounds)
        self.members = nn.ModuleList(
            EncodedMember(e, mlp(e.output_dim + ac_dim, 1, layer_dims, layer_norm=layer_norm))
            for e in (ObsEncoder(inputs, encoder) for _ in range(n)))

    def forward(self, td, action: torch.Tensor) -> torch.Tensor:
        return torch.stack([_squash(m(td, action), self.bounds) for m in self.members])

    def q1(self, td, action: torch.Tensor) -> torch.Tensor:
        return _squash(self.members[0](td, action), self.bounds)


class DistributionalQ(nn.Module):
    """C51 critic (robomimic ``DistributionalActionValueNetwork``): one MLP giving logits over fixed atoms."""

    def __init__(self, obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None,
                 layer_dims: Sequence[int] = (300, 400), value_bounds=None, num_atoms: int = 51,
                 encoder: dict | None = None):
        super().__init__()
        if value_bounds is None:
            raise ValueError("the distributional critic needs value bounds for its support: set "
                             "algo.critic.value_bounds=[low,high] (robomimic crashes on the default null)")
        lo, hi = (float(v) for v in value_bounds)
        if not hi > lo or num_atoms < 2:
            raise ValueError(f"need value_bounds low < high and num_atoms >= 2, got {value_bounds}, {num_atoms}")
        self.encoder = ObsEncoder(group_inputs(obs_shapes, goal_shapes), encoder)
        self.members = nn.ModuleList([mlp(self.encoder.output_dim + ac_dim, num_atoms, layer_dims)])
        self.register_buffer("atoms", torch.linspace(lo, hi, num_atoms))

    def logits(self, td, action: torch.Tensor) -> torch.Tensor:
        """``[*action.shape[:-1], num_atoms]``."""
        return self.members[0](_state_action(self.encoder(td), action))

    def q1(self, td, action: torch.Tensor) -> torch.Tensor:
        """Expected value ``sum_j p_j z_j``: ``[*action.shape[:-1], 1]``."""
        return (torch.softmax(self.logits(td, action), -1) * self.atoms).sum(-1, keepdim=True)

    def forward(self, td, action: torch.Tensor) -> torch.Tensor:
        return self.q1(td, action).unsqueeze(0)


class PerturbationActor(nn.Module):
    """robomimic ``PerturbationActorNetwork``: ``clamp(a + scale * tanh(MLP(cat(s, a))), -1, 1)``."""

    def __init__(self, obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None,
                 layer_dims: Sequence[int] = (300, 400), perturbation_scale: float = 0.05,
                 encoder: dict | None = None):
        super().__init__()
        self.encoder = ObsEncoder(group_inputs(obs_shapes, goal_shapes), encoder)
        self.net = mlp(self.encoder.output_dim + ac_dim, ac_dim, layer_dims)
        self.scale = float(perturbation_scale)

    def forward(self, td, action: torch.Tensor) -> torch.Tensor:
        delta = torch.tanh(self.net(_state_action(self.encoder(td), action)))
        return (action + self.scale * delta).clamp(-1.0, 1.0)


class Scalar(nn.Module):
    """One learnable scalar; ``forward()`` returns it (shape ``[]``)."""

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.value


# --- builders (recipes name these under ``nets``; they receive obs_shapes, ac_dim, goal_shapes) -----------------

def value_net(obs_shapes: dict, ac_dim: int | None = None, goal_shapes: dict | None = None,
              layer_dims: Sequence[int] = (300, 400), value_bounds=None, encoder: dict | None = None) -> ValueNet:
    return ValueNet(obs_shapes, goal_shapes, tuple(layer_dims), value_bounds, encoder)


def q_ensemble(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None,
               layer_dims: Sequence[int] = (300, 400), n: int = 2, value_bounds=None,
               encoder: dict | None = None, layer_norm: bool = False):
    """Low-dim observations: the stacked :class:`QEnsemble` (one shared parameter-free encoder); image encoders:
    :class:`EncodedQEnsemble` (one encoder per critic). ``layer_norm``: LayerNorm after every hidden layer."""
    if any(True for _ in ObsEncoder(group_inputs(obs_shapes, goal_shapes), encoder).parameters()):
        return EncodedQEnsemble(obs_shapes, ac_dim, goal_shapes, tuple(layer_dims), n, value_bounds, encoder,
                                layer_norm)
    return QEnsemble(obs_shapes, ac_dim, goal_shapes, tuple(layer_dims), n, value_bounds, encoder, layer_norm)


def distributional_q(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None,
                     layer_dims: Sequence[int] = (300, 400), value_bounds=None,
                     num_atoms: int = 51, encoder: dict | None = None) -> DistributionalQ:
    return DistributionalQ(obs_shapes, ac_dim, goal_shapes, tuple(layer_dims), value_bounds, num_atoms, encoder)


def perturbation_actor(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None,
                       layer_dims: Sequence[int] = (300, 400), perturbation_scale: float = 0.05,
                       encoder: dict | None = None) -> PerturbationActor:
    return PerturbationActor(obs_shapes, ac_dim, goal_shapes, tuple(layer_dims), perturbation_scale, encoder)


def scalar(obs_shapes: dict | None = None, ac_dim: int | None = None, goal_shapes: dict | None = None,
           init: float = 0.0) -> Scalar:
    """A learnable scalar network (the shapes are ignored)."""
    return Scalar(init)


def rl_actor(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, layer_dims: Sequence[int] = (300, 400),
             net: dict | None = None, encoder: dict | None = None):
    """The stochastic actor of CQL / IQL from robomimic's ``algo.actor.net`` section: ``type`` gaussian or gmm,
    with the ``common`` settings plus those of the chosen type (a BC policy with that head)."""
    from modmimic.components.nets.policy import policy

    net = dict(net or {})
    kind = net.get("type", "gaussian")
    if kind not in ("gaussian", "gmm"):
        raise ValueError(f"algo.actor.net.type must be 'gaussian' or 'gmm', got {kind!r}")
    head_kwargs = {**dict(net.get("common") or {}), **dict(net.get(kind) or {})}
    return policy(obs_shapes, ac_dim, goal_shapes, backbone="mlp", head=kind, layer_dims=tuple(layer_dims),
                  head_kwargs=head_kwargs, encoder=encoder)
