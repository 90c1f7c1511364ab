"""Still stretches of demonstrations: steps where nothing the policy observes moves (``train.idle_steps``).

Scripted and human demonstrations pause: the arm holds still while the fingers finish closing, while a person
hesitates, while a controller waits out a timer. Over such a stretch the observation does not change while the
action eventually does (hold, hold, ..., lift), and a recurrent policy that sees a few steps of history (BC-RNN's
``train.seq_length``; at rollout its state restarts every ``algo.rnn.horizon`` steps) cannot tell how long it has
waited: it learns to hold, and at rollout it can hold forever.

A step ``t`` of a demo is *still* when every dimension of the policy's low-dimensional observation moves, from
``t`` to ``t + 1``, by less than ``tolerance`` times that dimension's standard deviation over the data (0.01: about
1 mm of the end effector, 0.15 mm of a finger). With ``train.idle_steps.drop=true`` each run of consecutive still
steps keeps its first ``keep`` steps and loses the rest, so the training windows go from the last step that moved
straight on to the next one; a demo's last step is always kept. Rows keep their own actions, rewards, dones and
next observations (a dropped step's successor follows in the window: meant for behaviour cloning, not for TD
targets). Normalization statistics are those of the kept rows.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from modmimic import keys as K
from modmimic.data import stats as S


def still_steps(x: np.ndarray, lengths, tolerance: float, scale: np.ndarray) -> np.ndarray:
    """``[N]`` bool over the concatenated demos of ``lengths``: the observation ``x`` (``[N, D]``) moves by less
    than ``tolerance * scale`` in every dimension from this step to the next of the same demo (a demo's last step
    is never still)."""
    x = np.asarray(x, dtype=np.float64)
    step = np.abs(np.diff(x, axis=0)) < tolerance * np.asarray(scale, dtype=np.float64)
    still = np.zeros(len(x), dtype=bool)
    still[:-1] = step.all(axis=1)
    ends = np.cumsum(np.asarray(lengths, dtype=np.int64)) - 1
    still[ends] = False
    return still


def kept_rows(still: np.ndarray, lengths, keep: int) -> np.ndarray:
    """Row indices left when each run of consecutive still steps (within a demo) keeps only its first ``keep``."""
    keep_mask = np.ones(len(still), dtype=bool)
    start = 0
    for n in (int(v) for v in lengths):
        run = 0
        for i in range(start, start + n):
            run = run + 1 if still[i] else 0
            if run > keep:
                keep_mask[i] = False
        start += n
    return np.flatnonzero(keep_mask)


def without_idle(store, keys: list[str], tolerance: float = 0.01, keep: int = 1):
    """``store`` without the still steps of its demos beyond the first ``keep`` of each run (a new store, rows in
    RAM): still judged on the low-dim observation ``keys`` (:func:`still_steps`). Returns ``(store, dropped rows)``."""
    from modmimic.data.hdf5 import DatasetError

    cols = [store.columns[K.obs(k)] for k in keys if K.obs(k) in store.columns]
    if not cols:
        raise DatasetError(f"{store.path}: train.idle_steps needs low-dim observations to tell still steps "
                           f"(the policy's keys {keys} have none)")
    flat = store.flat.as_subclass(torch.Tensor)
    x = torch.cat([flat[:, a:b] for a, b, _ in cols], dim=1).numpy()
    scale = np.maximum(x.std(axis=0), 1e-6)  # a constant dimension never moves
    lengths = store.lengths.tolist()
    rows = kept_rows(still_steps(x, lengths, tolerance, scale), lengths, keep)
    if len(rows) == store.num_samples:
        return store, 0
    index = torch.as_tensor(rows, dtype=torch.long)
    demo_of_row = np.repeat(np.arange(len(lengths)), lengths)
    new_lengths = torch.as_tensor(np.bincount(demo_of_row[rows], minlength=len(lengths)), dtype=store.lengths.dtype)
    offsets = torch.zeros_like(new_lengths)
    offsets[1:] = torch.cumsum(new_lengths, 0)[:-1]
    new_flat = flat[index].contiguous()
    obs_moments = {k: S.moments(new_flat[:, store.columns[K.obs(k)][0]:store.columns[K.obs(k)][1]].numpy())
                   for k in store.obs_moments if K.obs(k) in store.columns}
    action_moments, a = {}, store.columns[K.ACTION][0]
    for name, m in store.action_moments.items():  # the action keys side by side in the action column
        dim = int(np.asarray(m["mean"]).size)
        action_moments[name] = S.moments(new_flat[:, a:a + dim].numpy())
        a += dim
    uint8 = {k: v[index] for k, v in store.uint8.items()}
    out = dataclasses.replace(store, flat=new_flat, lengths=new_lengths, offsets=offsets.to(store.offsets.dtype),
                              uint8=uint8, obs_moments={**store.obs_moments, **obs_moments},
                              action_moments=action_moments, memmap_path=None, memmap_reused=False)
    return out, store.num_samples - len(rows)
