"""Co-training on several datasets (robomimic 0.5 ``MetaDataset``, reference §5.7).

Each dataset of ``train.data`` is its own :class:`~modmimic.data.hdf5.EpisodeStore` with its own
:class:`~modmimic.data.sampler.WindowSampler`; :class:`MetaSampler` draws, for every row of a batch, which dataset it
comes from (one seeded categorical draw for the whole batch), then asks each dataset's sampler for as many windows as
rows chose it (one gather per dataset) and puts the rows back in the drawn order.

Weights follow robomimic's ``CustomWeightedRandomSampler``: every *window* of dataset ``i`` has weight ``w_i``, so
dataset ``i`` is drawn with probability ``w_i * len_i / sum_j w_j * len_j`` (``len``: its number of windows); with
``train.normalize_weights_by_ds_size=true`` the per-window weight is ``w_i / len_i`` and dataset ``i`` is drawn with
probability ``w_i / sum_j w_j``. Within a dataset, windows come from its sampler's shuffled walk (every window once
per pass), where robomimic draws them with replacement; both are uniform over the dataset's windows.

Normalization statistics are computed once over all datasets (Chan's merge of every dataset's moments): robomimic
pools the action statistics the same way, and its observation statistics fail with several datasets (§13 bug 6).
"""
from __future__ import annotations

import re

import numpy as np
import torch
from tensordict import TensorDict

from modmimic import keys as K
from modmimic.data import stats as S
from modmimic.data.hdf5 import DatasetError, EpisodeStore
from modmimic.data.sampler import WindowSampler


def dataset_names(entries: list[dict]) -> list[str]:
    """A short, unique name per dataset (log names ``Valid/<name>/Loss``): the entry's ``name`` (or robomimic's
    ``key``), else the file name without its extension; characters other than letters, digits, ``_ . -`` become
    ``_``; repeated names get ``_2``, ``_3``, ..."""
    out = []
    for e in entries:
        raw = e.get("name") or e.get("key") or re.sub(r"\.(hdf5|h5)$", "", str(e["path"]).rsplit("/", 1)[-1])
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(raw)) or "dataset"
        base, n = name, 2
        while name in out:
            name, n = f"{base}_{n}", n + 1
        out.append(name)
    return out


def check_same_layout(stores: list[EpisodeStore]) -> None:
    """Every store has the first one's batch keys with the same shapes (observations, actions per action key,
    rewards); a :class:`DatasetError` names both files and the key otherwise."""
    first = stores[0]
    want = {k: tuple(shape) for k, (_, _, shape) in first.columns.items()}
    want.update({k: tuple(t.shape[1:]) for k, t in first.uint8.items()})
    for s in stores[1:]:
        have = {k: tuple(shape) for k, (_, _, shape) in s.columns.items()}
        have.update({k: tuple(t.shape[1:]) for k, t in s.uint8.items()})
        for k in sorted(set(want) | set(have), key=repr):
            if want.get(k) != have.get(k):
                a = "missing" if k not in want else f"shape {want[k]}"
                b = "missing" if k not in have else f"shape {have[k]}"
                hint = " (rewards/dones are loaded only when every demo of every dataset has them)" \
                    if k in (K.REWARD, K.DONE) else ""
                raise DatasetError(f"train.data: the datasets do not fit together: batch key {k} is {a} in "
                                   f"{first.path} but {b} in {s.path}{hint}")
        for a in first.action_keys:
            da, db = first.action_moments[a]["mean"].shape, s.action_moments[a]["mean"].shape
            if da != db:
                raise DatasetError(f"train.data: action key {a!r} has {da[-1]} dims in {first.path} but {db[-1]} in "
                                   f"{s.path}")


def merged_moments(stores: list[EpisodeStore], which: str) -> dict:
    """``{key: moments}`` over every store (``which``: ``"obs_moments"`` or ``"action_moments"``), merged with
    Chan's parallel algorithm: the moments of the concatenated data."""
    out = {}
    for s in stores:
        for k, m in getattr(s, which).items():
            out[k] = S.merge_moments(out.get(k), m)
    return out


def merged_obs_stats(stores: list[EpisodeStore]) -> dict:
    return {k: S.obs_stats_from_moments(m) for k, m in merged_moments(stores, "obs_moments").items()}


def merged_action_stats(stores: list[EpisodeStore], action_config: dict | None = None) -> dict:
    action_config = action_config or {}
    return {k: S.action_stats_from_moments(m, (action_config.get(k) or {}).get("normalization"))
            for k, m in merged_moments(stores, "action_moments").items()}


def dataset_probabilities(weights, num_windows, normalize_by_size: bool = False) -> torch.Tensor:
    """Probability that a batch row comes from each dataset (robomimic's per-window weights summed per dataset):
    ``w_i * len_i`` normalized, or ``w_i`` normalized with ``normalize_by_size``."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if not normalize_by_size:
        w = w * torch.as_tensor(np.asarray(num_windows, dtype=np.float64))
    return w / w.sum()


def _cat_rows(parts: list, rows: torch.Tensor) -> dict:
    """Nested dict of ``cat(leaves of parts)[rows]`` per leaf (one cat and one index per leaf, no TensorDict
    validation: every part comes from the same gather code)."""
    out = {}
    for k in parts[0].keys():
        v = parts[0].get(k)
        if isinstance(v, TensorDict):
            out[k] = _cat_rows([p.get(k) for p in parts], rows)
        else:
            out[k] = torch.cat([p.get(k) for p in parts], 0)[rows]
    return out


class MetaSampler:
    """``[B, T]`` batches whose rows come from several :class:`WindowSampler` s, dataset chosen per row with
    probabilities ``probs`` (:func:`dataset_probabilities`). ``("index")`` and ``("episode")`` are made global
    (offset by the windows / demos of the datasets before), so they stay unique across datasets."""

    def __init__(self, samplers: list[WindowSampler], probs: torch.Tensor, batch_size: int, seed: int = 0,
                 names: list[str] | None = None):
        if len(samplers) != len(probs):
            raise ValueError(f"{len(samplers)} samplers but {len(probs)} probabilities")
        self.samplers = list(samplers)
        self.names = list(names or [str(i) for i in range(len(samplers))])
        self.probs = torch.as_tensor(probs, dtype=torch.float64)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.window_offsets = np.concatenate([[0], np.cumsum([len(s) for s in samplers])[:-1]]).tolist()
        self.episode_offsets = np.concatenate([[0], np.cumsum([len(s.store.lengths) for s in samplers])[:-1]]).tolist()

    def __len__(self) -> int:
        """All windows of all datasets (robomimic ``len(MetaDataset)``)."""
        return sum(len(s) for s in self.samplers)

    @property
    def store(self) -> EpisodeStore:
        """The first dataset's store (shapes, keys)."""
        return self.samplers[0].store

    def choose(self, n: int) -> torch.Tensor:
        """Dataset of each of ``n`` rows (one seeded categorical draw)."""
        return torch.multinomial(self.probs, n, replacement=True, generator=self.generator)

    def sample(self) -> TensorDict:
        ids = self.choose(self.batch_size)
        counts = torch.bincount(ids, minlength=len(self.samplers)).tolist()
        parts = []
        for i, c in enumerate(counts):
            if c == 0:
                continue
            s = self.samplers[i]
            td = s.gather(s.next_windows(c))
            td.set(K.INDEX, td.get(K.INDEX) + self.window_offsets[i])
            td.set(K.EPISODE, td.get(K.EPISODE) + self.episode_offsets[i])
            parts.append(td)
        if len(parts) == 1:
            return parts[0]
        # the parts' rows are grouped by dataset in id order: batch row r is part row rank(r) of the stable sort
        rank = torch.argsort(torch.argsort(ids, stable=True))
        return TensorDict._new_unsafe(_cat_rows(parts, rank.to(parts[0].device)), batch_size=parts[0].batch_size[:0]
                                      + torch.Size([len(ids), *parts[0].batch_size[1:]]), device=parts[0].device)

    def __iter__(self):
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "datasets": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["datasets"]) != len(self.samplers):
            raise ValueError(f"sampler state of {len(state['datasets'])} datasets, this run has {len(self.samplers)}")
        self.generator.set_state(state["generator"])
        for s, st in zip(self.samplers, state["datasets"]):
            s.load_state_dict(st)
