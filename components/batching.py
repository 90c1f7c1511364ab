"""How sampled windows ``[B, T]`` become a recipe's training batch (robomimic's ``process_batch_for_training``).

Each function is pure: ``fn(batch, **recipe kwargs) -> batch``.
"""
from __future__ import annotations

import torch

from modmimic import keys as K


def first_step(batch):
    """Single-step algorithms: every entry at the window's first step (robomimic ``[:, 0]``) -> ``[B]``."""
    return batch[:, 0] if batch.batch_dims == 2 else batch


def full_sequence(batch, open_loop: bool = False):
    """Sequence algorithms (BC-RNN): the whole window; ``open_loop`` replaces every observation by the first one
    (robomimic ``rnn.open_loop``)."""
    if open_loop:
        batch = batch.clone(False)
        obs = batch[K.OBS]
        for k, v in obs.items():
            obs[k] = v[:, :1].expand_as(v)
    return batch


def transformer_window(batch, context_length: int, supervise_all_steps: bool = False,
                       pred_future_acs: bool = False):
    """BC-Transformer: observations ``[:, :context_length]``; actions of every step (``supervise_all_steps``, from
    step ``context_length - 1`` when ``pred_future_acs``) or of the last context step only."""
    T = batch.batch_size[1]
    if T < context_length:
        raise ValueError(f"windows have {T} steps but the transformer context is {context_length}: "
                         "set train.frame_stack = algo.transformer.context_length")
    out = batch[:, :context_length]
    if supervise_all_steps:
        start = context_length - 1 if pred_future_acs else 0
        acts = batch[K.ACTION][:, start:start + context_length]
        if acts.shape[1] != context_length:
            raise ValueError("pred_future_acs needs train.seq_length >= context_length")
        out = out.clone(False)
        out[K.ACTION] = acts
    else:
        # supervise the last context step only: losses reduce over the steps where the loss mask is True
        out = out.clone(False)
        mask = torch.zeros(out.batch_size, dtype=torch.bool, device=out.device)
        mask[:, -1] = True
        out[K.LOSS_MASK] = mask
    return out
