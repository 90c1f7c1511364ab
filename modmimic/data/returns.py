"""Monte-Carlo returns-to-go of the demonstrations, for recipes that require ``mc_returns`` (Cal-QL's lower bound).

``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` within each demo, ``G`` after a demo's last step = 0 (a demo that ends
without a done is treated as ending there: the return of what the data did, a lower bound on the value of acting
well). With ``terminal_reward`` (``batch.terminal_reward``) a step rewarded at least that much is a done too, as the
transition batch makes it (:func:`modmimic.components.batching.n_step_transition`): a scripted demo's success is
worth 1, as an online episode's that ends at its first success, not the sum of the rewards repeated after it.
:func:`with_mc_returns` adds them to an episode store as the column ``mc_return`` that the window sampler gathers like
the rewards.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from modmimic import keys as K


def mc_returns(rewards: np.ndarray, dones: np.ndarray, lengths, discount: float,
               terminal_reward: float | None = None) -> np.ndarray:
    """``[N]`` returns-to-go (float64) of the concatenated demos of ``lengths`` (rows in demo order)."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    done = np.asarray(dones, dtype=np.float64).reshape(-1) != 0
    if terminal_reward is not None:
        done = done | (r >= terminal_reward)
    live = 1.0 - done
    out = np.empty_like(r)
    start = 0
    for n in (int(x) for x in lengths):
        g = 0.0
        for i in range(start + n - 1, start - 1, -1):
            g = r[i] + discount * live[i] * g
            out[i] = g
        start += n
    return out


def with_mc_returns(store, discount: float, terminal_reward: float | None = None):
    """``store`` with a ``mc_return`` column (a new store; the flat rows gain one float column, in RAM)."""
    if K.MC_RETURN in store.columns:
        return store
    if not (store.has(K.REWARD) and store.has(K.DONE)):
        from modmimic.data.hdf5 import DatasetError

        raise DatasetError(f"{store.path}: Monte-Carlo returns need rewards and dones in every demo")
    flat = store.flat.as_subclass(torch.Tensor)  # a memory-mapped store's rows are copied into RAM
    ra, _, _ = store.columns[K.REWARD]
    da, _, _ = store.columns[K.DONE]
    g = mc_returns(flat[:, ra].numpy(), flat[:, da].numpy() != 0, store.lengths.tolist(), float(discount),
                   terminal_reward)
    width = flat.shape[1]
    columns = {**store.columns, K.MC_RETURN: (width, width + 1, (1,))}
    flat = torch.cat([flat, torch.as_tensor(g, dtype=flat.dtype).unsqueeze(1)], dim=1).contiguous()
    return dataclasses.replace(store, flat=flat, columns=columns)
