"""Policies = observation encoder -> backbone (MLP, RNN or transformer) -> head.

``policy(...)`` is the builder recipes name under ``nets``; it composes the pieces from plain config values.

* ``forward(td)`` — training output for the TensorDict batch (``[B]`` or ``[B, T]``): an action tensor
  (deterministic head) or a distribution with that batch shape.
* ``act(td)`` — the evaluation action of the same batch.
* ``dist(td)`` — the action distribution with the uniform interface of
  :mod:`~modmimic.components.nets.distributions` (``sample``, ``rsample``, ``log_prob``, ``mode``,
  ``rsample_with_log_prob``, ``sample_with_log_prob``); ``distribution_ops`` lists those the head offers. For a
  stochastic head ``dist(td)`` is ``forward(td)``; for the deterministic head it is a point mass on the action, while
  ``forward(td)`` stays the bare action tensor (the BC hot path builds no distribution object).
* recurrent backbones also offer ``initial_state(B)`` and ``forward_step(td, state) -> (output, state)`` for
  step-wise inference with a carried hidden state; ``forward(td, state)`` equals stepping through ``T``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from modmimic.components.nets.core import ObsEncoder, group_inputs, mlp, mlp_output_dim
from modmimic.components.nets.film import TaskConditionedEncoder
from modmimic.components.nets.heads import HEADS


class MLPBackbone(nn.Module):
    recurrent = False

    def __init__(self, input_dim: int, layer_dims: Sequence[int] = ()):
        super().__init__()
        self.net = mlp(input_dim, 0, layer_dims)
        self.output_dim = mlp_output_dim(input_dim, 0, layer_dims)

    def forward(self, x):
        return self.net(x)


class RNNBackbone(nn.Module):
    """LSTM/GRU (batch first) followed by a per-step MLP (robomimic ``RNN_MIMO_MLP``, per_step=True)."""

    recurrent = True

    def __init__(self, input_dim: int, hidden_dim: int = 400, num_layers: int = 2, rnn_type: str = "LSTM",
                 mlp_layer_dims: Sequence[int] = (), bidirectional: bool = False):
        super().__init__()
        cls = {"LSTM": nn.LSTM, "GRU": nn.GRU}.get(rnn_type)
        if cls is None:
            raise ValueError(f"rnn_type must be 'LSTM' or 'GRU', got {rnn_type!r}")
        if bidirectional:
            raise ValueError("bidirectional RNNs cannot act step by step; set algo.rnn.kwargs.bidirectional=false")
        self.rnn_type, self.hidden_dim, self.num_layers = rnn_type, hidden_dim, num_layers
        self.rnn = cls(input_dim, hidden_dim, num_layers, batch_first=True)
        self.per_step = mlp(hidden_dim, 0, mlp_layer_dims)
        self.output_dim = mlp_output_dim(hidden_dim, 0, mlp_layer_dims)

    def initial_state(self, batch_size: int, device=None):
        z = torch.zeros(self.num_layers, batch_size, self.hidden_dim, device=device)
        return (z, z.clone()) if self.rnn_type == "LSTM" else z

    def forward(self, x, state=None):
        """``x`` ``[B, T, D]`` -> ``([B, T, H], state)``."""
        y, state = self.rnn(x, state)
        return self.per_step(y), state


class Policy(nn.Module):
    def __init__(self, encoder: ObsEncoder, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.backbone, self.head = encoder, backbone, head
        self.in_keys = encoder.in_keys
        self.recurrent = getattr(backbone, "recurrent", False)

    def features(self, td, state=None):
        x = self.encoder(td)
        if self.recurrent:
            if x.dim() == 2:
                raise ValueError("a recurrent policy needs [B, T] sequence batches (train.seq_length > 1 windows)")
            return self.backbone(x, state)
        return self.backbone(x), None

    def forward(self, td, state=None):
        return self.head(self.features(td, state)[0])

    def act(self, td):
        return self.head.act(self.features(td)[0])

    def predict_chunk(self, td):
        """The evaluation actions over a ``[B, T]`` observation window, ``[B, T, A]`` (``[B, 1, A]`` for a ``[B]``
        batch): a transformer's per-step outputs as the chunk of :class:`~modmimic.components.acting.Chunked`."""
        a = self.act(td)
        return a.unsqueeze(1) if a.dim() == 2 else a

    def dist(self, td, state=None):
        """The action distribution (uniform interface, see the module docstring)."""
        return self.head.dist(self.features(td, state)[0])

    @property
    def distribution_ops(self) -> frozenset:
        return self.head.distribution_ops

    @property
    def distribution_name(self) -> str:
        tanh = " (use_tanh)" if getattr(self.head, "use_tanh", False) else ""
        return f"policy head {type(self.head).__name__}{tanh}"

    # --- step-wise inference (recurrent backbones) -------------------------------------------------------
    def initial_state(self, batch_size: int, device=None):
        return self.backbone.initial_state(batch_size, device)

    def forward_step(self, td, state, deterministic_eval: bool = True):
        """One step for a ``[B]`` batch: ``(action, new state)``; ``act`` semantics for the action."""
        y, state = self.backbone(self.encoder(td).unsqueeze(1), state)
        return self.head.act(y[:, 0]), state


def policy(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, goal_group: str = "goal",
           backbone: str = "mlp", head: str = "deterministic", layer_dims: Sequence[int] = (),
           rnn: dict | None = None, transformer: dict | None = None, head_kwargs: dict | None = None,
           encoder: dict | None = None, task_dim: int | None = None, task_fuse: str = "film") -> Policy:
    """Compose a policy. ``backbone`` in {mlp, rnn, transformer}; ``head`` in {deterministic, gaussian, gmm};
    ``layer_dims`` are the MLP layers (the per-step MLP after an RNN); ``rnn``/``transformer`` are robomimic's
    ``algo.rnn`` / ``algo.transformer`` sections; ``encoder`` the observation encoder spec
    (:func:`~modmimic.components.nets.core.encoder_spec`; the transformer's has no feature activation, as
    robomimic's ``MIMO_Transformer``). ``task_dim``: a multi-task policy, its encoder conditioned on the task
    embedding of that size (``task_fuse``: ``film`` or ``concat``, see
    :class:`~modmimic.components.nets.film.TaskConditionedEncoder`)."""
    enc = ObsEncoder(group_inputs(obs_shapes, goal_shapes, goal_group), encoder,
                     feature_activation=None if backbone == "transformer" else nn.ReLU)
    if task_dim:
        enc = TaskConditionedEncoder(enc, task_dim, task_fuse)
    if backbone == "mlp":
        bb = MLPBackbone(enc.output_dim, layer_dims)
    elif backbone == "rnn":
        r = dict(rnn or {})
        kw = dict(r.get("kwargs") or {})
        bb = RNNBackbone(enc.output_dim, hidden_dim=r.get("hidden_dim", 400), num_layers=r.get("num_layers", 2),
                         rnn_type=r.get("rnn_type", "LSTM"), mlp_layer_dims=layer_dims,
                         bidirectional=bool(kw.get("bidirectional", False)))
    elif backbone == "transformer":
        from modmimic.components.nets.transformer import TransformerBackbone

        bb = TransformerBackbone(enc.output_dim, **{k: v for k, v in (transformer or {}).items()
                                                    if k not in ("enabled", "supervise_all_steps",
                                                                 "pred_future_acs")})
    else:
        raise ValueError(f"unknown backbone {backbone!r}: expected 'mlp', 'rnn' or 'transformer'")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}: expected one of {sorted(HEADS)}")
    hd = HEADS[head](bb.output_dim, ac_dim, **(head_kwargs or {}))
    return Policy(enc, bb, hd)
