"""Building the training data of a config in one call: :func:`build_data` loads the train (and validation) split of
``train.data`` (robomimic HDF5 or a LeRobotDataset folder; several datasets for co-training) into episode stores and
returns them with their window samplers and the statistics a checkpoint stores (:class:`TrainData`). Every check that
needs the data (disjoint splits, window settings, batch memory, action normalization) happens here, before training.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

from modmimic.config import ConfigError, all_obs_keys, to_plain
from modmimic.data.check import action_range_warning, min_max_override
from modmimic.data.default import default_dataset_path
from modmimic.data.hdf5 import DatasetError, EpisodeStore, load_episode_store
from modmimic.data.meta import (MetaSampler, check_same_layout, dataset_names, dataset_probabilities,
                                merged_action_stats, merged_obs_stats)
from modmimic.data.requirements import check_requirements, requirements
from modmimic.data.returns import with_mc_returns
from modmimic.data.sampler import WindowSampler
from modmimic.dataset import dataset_entries
from modmimic.logger import check_dir_creatable
from modmimic.memory import available_memory_bytes
from modmimic.policy import action_segments, check_action_config, stats_widths


@dataclass
class TrainData:
    """The loaded splits, their samplers and the statistics a checkpoint stores."""

    path: str
    train_store: EpisodeStore
    train_sampler: WindowSampler | MetaSampler
    valid_store: EpisodeStore | None
    valid_sampler: WindowSampler | MetaSampler | None
    obs_normalization_stats: dict | None
    action_normalization_stats: dict
    env_meta: dict
    # co-training (several datasets in train.data): every dataset's name, stores and validation sampler
    names: list = field(default_factory=list)
    train_stores: list = field(default_factory=list)
    valid_stores: list = field(default_factory=list)
    valid_sets: dict = field(default_factory=dict)
    task_vocab: object = None  # multi-task training (task.conditioning): a modmimic.tasks.TaskVocab

    @property
    def task_dim(self) -> int | None:
        return None if self.task_vocab is None else self.task_vocab.dim

    def describe(self) -> str:
        """``<path> (<samples> samples, <demos> demos[, <n> validation demos])``, or the same per dataset; a
        multi-task run's tasks after them."""
        v = self.task_vocab
        tasks = "" if v is None else f"; {len(v)} tasks ({v.conditioning}, embeddings of size {v.dim}): " + \
            ", ".join(repr(n) for n in v.names[:12]) + (", ..." if len(v) > 12 else "")
        return self._describe_data() + tasks

    def _describe_data(self) -> str:
        if not self.names:
            return (f"{self.path} ({self.train_store.num_samples} samples, {len(self.train_store.demos)} demos"
                    f"{'' if self.valid_store is None else f', {len(self.valid_store.demos)} validation demos'})")
        parts = []
        for i, (name, st) in enumerate(zip(self.names, self.train_stores)):
            v = self.valid_stores[i] if self.valid_stores else None
            p = float(self.train_sampler.probs[i])
            parts.append(f"{name}: {st.path} ({st.num_samples} samples, {len(st.demos)} demos"
                         f"{'' if v is None else f', {len(v.demos)} validation demos'}, {p:.1%} of rows)")
        return f"{len(self.names)} datasets: " + "; ".join(parts)

    @property
    def obs_shapes(self) -> dict:
        return self.train_store.obs_shapes()

    @property
    def ac_dim(self) -> int:
        return self.train_store.ac_dim


def sampler_seed(seed: int, stream: int) -> int:
    """Independent, reproducible seed of sampler ``stream`` (0 = train, 1 = valid) from ``train.seed``."""
    return int(np.random.SeedSequence([int(seed), 7919, stream]).generate_state(1)[0])


def window_sampler(t, store: EpisodeStore, stream: int, obs_stats, action_stats, device, tasks=None) -> WindowSampler:
    """The shuffled window sampler of ``store`` with ``train`` section ``t``'s window settings, seeded for sampler
    ``stream`` (0 = train, 1 = valid, ...); bad window settings are a :class:`DatasetError` naming the file.
    ``tasks``: ``(demo task ids, embeddings)`` of a multi-task run."""
    try:
        return WindowSampler(store, t.batch_size, seq_length=t.seq_length, frame_stack=t.frame_stack,
                             pad_seq_length=t.pad_seq_length, pad_frame_stack=t.pad_frame_stack,
                             goal_mode=t.goal_mode, obs_normalization_stats=obs_stats,
                             action_normalization_stats=action_stats, shuffle=True,
                             seed=sampler_seed(t.seed, stream), device=device, tasks=tasks)
    except ValueError as e:
        raise DatasetError(f"{store.path}: {e}") from None


def with_required_returns(cfg: DictConfig, store):
    """``store`` with Monte-Carlo returns-to-go at ``algo.discount`` when the recipe requires ``mc_returns``
    (Cal-QL), else as is; with the batch function's ``terminal_reward``, so the returns end where its transitions
    do."""
    if store is None or "mc_returns" not in requirements(cfg):
        return store
    terminal = (cfg.get("batch") or {}).get("terminal_reward")
    return with_mc_returns(store, float(cfg.algo.discount), None if terminal is None else float(terminal))


def with_idle_dropped(cfg: DictConfig, store, keys: list[str]):
    """``store`` without its demos' still stretches when ``train.idle_steps.drop`` (:mod:`modmimic.data.idle`)."""
    idle = cfg.train.get("idle_steps") or {}
    if store is None or not idle.get("drop", False):
        return store
    from modmimic.data.idle import without_idle

    out, dropped = without_idle(store, keys, float(idle.tolerance), int(idle.keep))  # base.yaml's section
    print(f"modmimic.train: train.idle_steps.drop: {dropped} of {store.num_samples} steps of {store.path} dropped "
          f"(still beyond the first {int(idle.keep)} of each still stretch)", flush=True)
    return out


def build_data(cfg: DictConfig, device="cpu") -> TrainData:
    """Episode stores and window samplers of the train (and validation) split of ``train.data``."""
    t = cfg.train
    entries = dataset_entries(cfg)
    if len(entries) > 1:
        return build_meta_data(cfg, entries, device)
    entry = entries[0]
    path = entry["path"] or default_dataset_path()
    keys = all_obs_keys(cfg)  # obs, goal and subgoal keys, over every component of a hierarchical recipe
    action_keys, action_config = action_settings(t)
    if cfg.experiment.validate and t.hdf5_validation_filter_key is None:
        raise ConfigError("experiment.validate=true needs train.hdf5_validation_filter_key (e.g. 'valid'); "
                          "write one with `python -m modmimic.dataset split <file>`")

    def load(filter_key, sub):
        memmap = os.path.join(t.hdf5_memmap_dir, sub) if t.hdf5_memmap_dir else None
        return load_episode_store(path, keys, action_keys, filter_key=filter_key, load_next_obs=t.hdf5_load_next_obs,
                                  load_rewards=None, memmap_dir=memmap, demo_limit=entry.get("demo_limit"))

    if t.hdf5_memmap_dir:
        check_dir_creatable(t.hdf5_memmap_dir, "train.hdf5_memmap_dir")
    train_store = load(entry.get("filter_key") or t.hdf5_filter_key, "train")
    check_requirements(cfg, train_store)  # offline RL: rewards, dones, next observations
    valid_store = load(t.hdf5_validation_filter_key, "valid") if cfg.experiment.validate else None
    train_store, valid_store = (with_idle_dropped(cfg, train_store, keys),
                                with_idle_dropped(cfg, valid_store, keys))
    train_store, valid_store = with_required_returns(cfg, train_store), with_required_returns(cfg, valid_store)
    if valid_store is not None:
        check_disjoint(path, train_store, valid_store, f"train.hdf5_filter_key={t.hdf5_filter_key}",
                       f"train.hdf5_validation_filter_key={t.hdf5_validation_filter_key}")
    obs_stats = train_store.obs_normalization_stats() if t.hdf5_normalize_obs else None
    try:
        action_stats = train_store.action_normalization_stats(action_config)
    except ValueError as e:
        raise ConfigError(f"train.action_config: {e}") from None
    action_segments(action_keys, action_config, stats_widths(action_stats))  # rot_6d keys are 6 (6k) wide
    normalized = any((action_config.get(k) or {}).get("normalization") not in (None, "none", "None")
                     for k in action_keys)
    for store in (train_store, valid_store):
        if store is not None and store.memmap_path:
            print(f"modmimic.train: {'reusing' if store.memmap_reused else 'built'} the memory-mapped episode store "
                  f"{store.memmap_path}", flush=True)
    warn_about_data(cfg, train_store, action_config)

    vocab, task_ids = task_tables(cfg, [entry], [train_store], [valid_store] if valid_store else [])

    def sampler(store, stream):
        tasks = None if vocab is None else (task_ids[id(store)], vocab.embeddings)
        return window_sampler(t, store, stream, obs_stats, action_stats if normalized else None, device, tasks)

    train_sampler = sampler(train_store, 0)
    check_batch_size(t, train_sampler, device)
    return TrainData(path=path, train_store=train_store, train_sampler=train_sampler,
                     valid_store=valid_store, valid_sampler=sampler(valid_store, 1) if valid_store else None,
                     obs_normalization_stats=obs_stats, action_normalization_stats=action_stats,
                     env_meta=train_store.env_meta, task_vocab=vocab)


def task_tables(cfg: DictConfig, entries: list, train_stores: list, valid_stores: list):
    """``(TaskVocab, {id(store): demo task ids})`` of a multi-task run (``task.conditioning``), else ``(None, {})``:
    the vocabulary over the training demos, every store's demos mapped into it (:mod:`modmimic.tasks`)."""
    from modmimic import tasks as T

    if not T.conditioned(cfg):
        return None, {}
    train_pairs = [T.demo_tasks(st, e) for st, e in zip(train_stores, entries)]
    vocab = T.build_vocab(cfg, train_pairs)
    ids = {id(st): T.demo_ids(vocab, p, st.path) for st, p in zip(train_stores, train_pairs)}
    for st, e in zip(valid_stores, entries):
        ids[id(st)] = T.demo_ids(vocab, T.demo_tasks(st, e), st.path)
    return vocab, ids


def action_settings(t) -> tuple[list, dict]:
    """``(train.action_keys, train.action_config)``. An action_config entry for a key that is not an action key is
    an error when it asks for a normalization (a typo would silently not normalize); robomimic's default entry
    ``actions: {normalization: null}`` left over next to ``action_dict/...`` keys is ignored."""
    action_keys = list(t.action_keys)
    action_config = to_plain(t.action_config) or {}
    unknown = [k for k in action_config if k not in action_keys
               and (action_config[k] or {}).get("normalization") not in (None, "none", "None")]
    if unknown:
        raise ConfigError(f"train.action_config has entries {unknown} that are not in train.action_keys {action_keys}")
    action_config = {k: v for k, v in action_config.items() if k in action_keys}
    check_action_config(action_keys, action_config)  # format / convert_at_runtime names
    return action_keys, action_config


def check_disjoint(path: str, train_store: EpisodeStore, valid_store: EpisodeStore, train_key: str,
                   valid_key: str) -> None:
    shared = sorted(set(train_store.demos) & set(valid_store.demos))
    if shared:
        raise DatasetError(
            f"{path}: the training demos ({train_key}) and the validation demos ({valid_key}) share {len(shared)} "
            f"demos ({', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}); use disjoint filter keys such as "
            "train.hdf5_filter_key=train train.hdf5_validation_filter_key=valid")


def build_meta_data(cfg: DictConfig, entries: list[dict], device="cpu") -> TrainData:
    """Co-training (robomimic ``MetaDataset``, see :mod:`modmimic.data.meta`): one store per entry of
    ``train.data`` (its ``filter_key`` / ``validation_filter_key`` override ``train.hdf5_filter_key`` /
    ``train.hdf5_validation_filter_key``), normalization statistics over all of them, a :class:`MetaSampler` per
    split drawing each row's dataset by ``weight``, and each dataset's own validation sampler (``valid_sets``)."""
    t = cfg.train
    keys = all_obs_keys(cfg)
    action_keys, action_config = action_settings(t)
    validate = bool(cfg.experiment.validate)
    names = dataset_names(entries)
    if validate:
        lacking = [n for n, e in zip(names, entries) if (e.get("validation_filter_key") or
                                                         t.hdf5_validation_filter_key) is None]
        if lacking:
            raise ConfigError(f"experiment.validate=true needs a validation filter key for every dataset "
                              f"({', '.join(lacking)} have none): set train.hdf5_validation_filter_key (e.g. 'valid') "
                              "or validation_filter_key in their train.data entries")
    if t.hdf5_memmap_dir:
        check_dir_creatable(t.hdf5_memmap_dir, "train.hdf5_memmap_dir")
    train_stores, valid_stores = [], []
    for e in entries:
        path = e["path"]

        def load(filter_key, sub):
            memmap = os.path.join(t.hdf5_memmap_dir, sub) if t.hdf5_memmap_dir else None
            return load_episode_store(path, keys, action_keys, filter_key=filter_key,
                                      load_next_obs=t.hdf5_load_next_obs, load_rewards=None, memmap_dir=memmap,
                                      demo_limit=e.get("demo_limit"))

        train_key = e.get("filter_key") or t.hdf5_filter_key
        train_stores.append(load(train_key, "train"))
        check_requirements(cfg, train_stores[-1])
        if validate:
            valid_key = e.get("validation_filter_key") or t.hdf5_validation_filter_key
            valid_stores.append(load(valid_key, "valid"))
            check_disjoint(path, train_stores[-1], valid_stores[-1], f"filter key {train_key}",
                           f"validation filter key {valid_key}")
    check_same_layout(train_stores + valid_stores)
    train_stores = [with_required_returns(cfg, with_idle_dropped(cfg, st, keys)) for st in train_stores]
    valid_stores = [with_required_returns(cfg, with_idle_dropped(cfg, st, keys)) for st in valid_stores]
    obs_stats = merged_obs_stats(train_stores) if t.hdf5_normalize_obs else None
    try:
        action_stats = merged_action_stats(train_stores, action_config)
    except ValueError as e:
        raise ConfigError(f"train.action_config: {e}") from None
    action_segments(action_keys, action_config, stats_widths(action_stats))  # rot_6d keys are 6 (6k) wide
    normalized = any((action_config.get(k) or {}).get("normalization") not in (None, "none", "None")
                     for k in action_keys)
    env_meta = train_stores[0].env_meta
    for st in train_stores[1:]:
        if st.env_meta != env_meta and not cfg.experiment.get("env"):  # experiment.env: rollouts and eval use it
            warnings.warn(f"train.data: {st.path} has other environment metadata ({st.env_meta.get('env_name')!r}) "
                          f"than the first dataset {train_stores[0].path} ({env_meta.get('env_name')!r}); rollouts "
                          "and checkpoints use the first dataset's", stacklevel=2)
    for st in train_stores + valid_stores:
        if st.memmap_path:
            print(f"modmimic.train: {'reusing' if st.memmap_reused else 'built'} the memory-mapped episode store "
                  f"{st.memmap_path}", flush=True)
    for st in train_stores:
        warn_about_data(cfg, st, action_config)

    vocab, task_ids = task_tables(cfg, entries, train_stores, valid_stores)

    def sampler(store, stream):
        tasks = None if vocab is None else (task_ids[id(store)], vocab.embeddings)
        return window_sampler(t, store, stream, obs_stats, action_stats if normalized else None, device, tasks)

    by_size = bool(t.get("normalize_weights_by_ds_size", False))
    weights = [e["weight"] for e in entries]

    def meta(stores, stream):
        children = [sampler(st, 2 + 2 * i + stream) for i, st in enumerate(stores)]
        probs = dataset_probabilities(weights, [len(c) for c in children], by_size)
        return MetaSampler(children, probs, t.batch_size, seed=sampler_seed(t.seed, stream), names=names)

    train_sampler = meta(train_stores, 0)
    for child in train_sampler.samplers:
        check_batch_size(t, child, device)
    valid_sampler = meta(valid_stores, 1) if validate else None
    return TrainData(path=train_stores[0].path, train_store=train_stores[0], train_sampler=train_sampler,
                     valid_store=valid_stores[0] if validate else None, valid_sampler=valid_sampler,
                     obs_normalization_stats=obs_stats, action_normalization_stats=action_stats, env_meta=env_meta,
                     names=names, train_stores=train_stores, valid_stores=valid_stores,
                     valid_sets=dict(zip(names, valid_sampler.samplers)) if validate else {}, task_vocab=vocab)


def unnormalized_action_ranges(store: EpisodeStore, action_config: dict) -> dict:
    """``{action key: (min, max)}`` over the keys that train without ``train.action_config`` normalization."""
    return {k: (float(np.min(m["min"])), float(np.max(m["max"]))) for k, m in store.action_moments.items()
            if m is not None and (action_config.get(k) or {}).get("normalization") in (None, "none", "None")}


def check_action_bounds(nets, store: EpisodeStore, action_config: dict) -> None:
    """Refuse data a network cannot act on: a network with an ``action_bound`` (Diffusion Policy's and the flow
    policy's samplers clamp every action to [-1, 1]) and un-normalized actions beyond it (measured: Diffusion Policy
    on ALOHA's joint targets, up to 3.1, never grasped)."""
    for name, net in nets.items():
        bound = getattr(net, "action_bound", None)
        for k, (lo, hi) in unnormalized_action_ranges(store, action_config).items() if bound is not None else ():
            if lo < -bound or hi > bound:
                raise ConfigError(f"{store.path}: {k} span [{lo:.4g}, {hi:.4g}], but network {name!r} samples actions "
                                  f"clamped to [{-bound:g}, {bound:g}]: set {min_max_override(k)}")


def warn_about_data(cfg: DictConfig, store: EpisodeStore, action_config: dict) -> None:
    """Warnings for data that trains but probably not as meant: un-normalized actions outside [-1, 1] (robomimic
    expects normalized actions), ``train.seq_length`` longer than every demo (each window is mostly padding)."""
    for k, m in unnormalized_action_ranges(store, action_config).items():
        msg = action_range_warning(store.path, k, *m)
        if msg:
            warnings.warn(msg, stacklevel=2)
    longest = int(store.lengths.max())
    t = cfg.train
    if t.seq_length > longest:
        warnings.warn(f"train.seq_length={t.seq_length} is longer than the longest demo ({longest} steps) of "
                      f"{store.path}: every window is padded with repeated last steps", stacklevel=2)
    if t.frame_stack > longest:
        warnings.warn(f"train.frame_stack={t.frame_stack} is longer than the longest demo ({longest} steps) of "
                      f"{store.path}: every window is padded with repeated first steps", stacklevel=2)


BATCH_COPIES = 4  # a batch exists as gathered rows, the normalized batch, and network inputs/activations at least
MEMORY_SHARE = 0.5  # of the available memory, what one batch may take (the rest: networks, optimizer, the store)


def check_batch_size(t, sampler: WindowSampler, device) -> None:
    """Refuse a ``train.batch_size`` whose batches cannot fit in memory before the first one is allocated; the
    estimate is ``batch_size x window steps x bytes per step x BATCH_COPIES``."""
    store = sampler.store
    steps = int(t.seq_length) + int(t.frame_stack) - 1 + (1 if t.goal_mode else 0)
    row = store.flat.shape[1] * 4 + sum(int(np.prod(u.shape[1:])) for u in store.uint8.values()) + 8  # + index
    need = int(t.batch_size) * steps * row * BATCH_COPIES
    have = available_memory_bytes(device)
    if have is not None and need > MEMORY_SHARE * have:
        raise ConfigError(
            f"train.batch_size={t.batch_size} needs about {need / 2**30:.3g} GiB per batch ({steps} steps x {row} "
            f"bytes per step x {BATCH_COPIES} copies), more than half of the {have / 2**30:.3g} GiB available on "
            f"{device}; the train split has {len(sampler)} windows: lower train.batch_size")
