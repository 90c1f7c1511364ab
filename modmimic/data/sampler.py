"""Vectorised window sampling with robomimic ``SequenceDataset`` semantics (reference §5.2-5.4).

A window starting at step ``t`` of a demo of length ``L`` covers steps ``t-(fs-1) ... t+seq-1`` (``fs`` =
frame_stack, ``seq`` = seq_length), clamped into ``[0, L-1]``: the first/last step is repeated ("pad same") and
``("collector", "mask")`` is False on repeated steps. Valid starts per demo: ``L - (0 if pad_frame_stack else fs-1)
- (0 if pad_seq_length else seq-1)`` (at least 1 with ``pad_seq_length``), so every start index of every demo is
equally likely and long demos count by their length, exactly as robomimic. ``goal_mode="last"`` adds
``("goal", k)`` (expanded over T) = next observation at ``L-1-(0 if pad_seq_length else seq-1)``.

A batch is index arithmetic plus one gather from the store's flat buffer (plus one per uint8 key); entries of the
returned ``[B, T]`` TensorDict are views into that gathered block. No per-sample Python, no collate.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict

from modmimic import keys as K
from modmimic.data.hdf5 import EpisodeStore


def take_rows(store, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` (1-D) of an image store: a RAM tensor (``index_select``: one copy; advanced indexing of a 4-D
    uint8 tensor is ~15x slower) or a :class:`modmimic.data.rowfile.RowFile` (reads from its file)."""
    return store.index_select(0, rows) if isinstance(store, torch.Tensor) else store[rows]


def window_starts(lengths: torch.Tensor, offsets: torch.Tensor, seq_length: int, frame_stack: int,
                  pad_seq_length: bool, pad_frame_stack: bool):
    """Flat row of each window's current step ``t``, and its demo number (robomimic's index list, in order)."""
    fs_pad = 0 if pad_frame_stack else frame_stack - 1
    n = lengths - fs_pad - (0 if pad_seq_length else seq_length - 1)
    if pad_seq_length:
        n = n.clamp(min=1)
    n = n.clamp(min=0)
    episode = torch.repeat_interleave(torch.arange(len(lengths)), n)
    first = torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    t = torch.arange(int(n.sum())) - first + fs_pad
    return offsets[episode] + t, episode


def _columns(block: torch.Tensor, column: tuple, B: int, T: int) -> torch.Tensor:
    """The ``[B, T, *shape]`` view of one key's columns ``(a, b, shape)`` of a gathered ``[B, T, width]`` block."""
    a, b, shape = column
    x = block[..., a:b]
    return x if len(shape) == 1 else x.view(B, T, *shape)


def _over_time(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """A per-window ``[B]`` value as ``[B, T]`` (a view; no expand for single-step windows)."""
    return x.unsqueeze(1) if T == 1 else x.unsqueeze(1).expand(B, T)


class WindowSampler:
    """Samples ``[B, T]`` windows (``T = frame_stack - 1 + seq_length``) from an :class:`EpisodeStore`.

    ``shuffle=True`` walks random permutations of all windows (like a DataLoader with ``shuffle=True,
    drop_last=True``, but continuing across epochs); ``shuffle=False`` draws uniformly with replacement.
    ``batch_size`` is the global batch: after :meth:`shard` (data-parallel training) this process returns its
    ``batch_size / world`` slice of each global batch, all processes walking the same permutation.
    :meth:`keep_on_device` moves the low-dim store and the index tables to the training device (GPU sampling, no
    per-step host-to-device copy).
    Normalization (``(raw - offset) / scale``) is applied to the gathered block: observations, next observations
    and goals with the observation stats, the action vector with the per-action-key stats.
    ``tasks = (demo_task_ids [n_demos] int64, embeddings [n_tasks, D])`` (multi-task training, :mod:`modmimic.tasks`)
    adds ``("task", "id")`` ``[B, T]`` and ``("task", "embedding")`` ``[B, T, D]`` (the window's demo's task).
    """

    def __init__(self, store: EpisodeStore, batch_size: int, seq_length: int = 1, frame_stack: int = 1,
                 pad_seq_length: bool = True, pad_frame_stack: bool = True, goal_mode: str | None = None,
                 obs_normalization_stats: dict | None = None, action_normalization_stats: dict | None = None,
                 shuffle: bool = True, seed: int = 0, device: str | torch.device = "cpu", tasks=None):
        if seq_length < 1 or frame_stack < 1:
            raise ValueError(f"seq_length ({seq_length}) and frame_stack ({frame_stack}) must be >= 1")
        if goal_mode not in (None, "last"):
            raise ValueError(f"goal_mode must be None or 'last', got {goal_mode!r}")
        if goal_mode == "last" and not any(k[0] == K.NEXT and k[1] == K.OBS for k in store.columns):
            raise ValueError("goal_mode='last' needs next observations (train.hdf5_load_next_obs=true)")
        self.store, self.batch_size = store, int(batch_size)
        self.seq_length, self.frame_stack, self.goal_mode = seq_length, frame_stack, goal_mode
        self.T = frame_stack - 1 + seq_length
        self.device = torch.device(device)
        self.starts, self.episode = window_starts(store.lengths, store.offsets, seq_length, frame_stack,
                                                  pad_seq_length, pad_frame_stack)
        if len(self.starts) == 0:
            raise ValueError(f"no valid windows: every demo is shorter than frame_stack-1+seq_length={self.T} "
                             "and padding is off")
        self.lo = store.offsets[self.episode]
        self.hi = self.lo + store.lengths[self.episode] - 1
        self._first = self.starts == self.lo  # the window starts at its demo's first step (single-step is_init)
        self.goal_row = store.offsets + store.lengths - 1 - (0 if pad_seq_length else seq_length - 1)
        self.rel = torch.arange(-(frame_stack - 1), seq_length)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(int(seed))
        self._perm, self._cursor = None, 0
        self.rank, self.world = 0, 1
        self._flat, self._offsets, self._idx_dev, self._perm_dev = store.flat, store.offsets, None, None
        self._affine = self._build_affine(obs_normalization_stats, action_normalization_stats)
        self._obs_keys = [k for k in store.columns if k[0] == K.OBS]
        self._next_keys = [k for k in store.columns if k[0] == K.NEXT and k[1] == K.OBS]
        self._other = [k for k in (K.ACTION, K.REWARD) if k in store.columns]
        self.task_ids = self.task_table = None
        if tasks is not None:
            ids, table = tasks
            ids, table = torch.as_tensor(ids, dtype=torch.int64), torch.as_tensor(table, dtype=torch.float32)
            if ids.shape != (len(store.lengths),) or table.dim() != 2 or int(ids.max()) >= table.shape[0] or \
                    int(ids.min()) < 0:
                raise ValueError(f"tasks: {tuple(ids.shape)} demo task ids for {len(store.lengths)} demos, "
                                 f"embeddings of shape {tuple(table.shape)}")
            self.task_ids, self.task_table = ids, table.to(self.device)

    def __len__(self) -> int:
        """Number of windows (robomimic ``len(SequenceDataset)``)."""
        return len(self.starts)

    def _build_affine(self, obs_stats, action_stats):
        if not obs_stats and not action_stats:
            return None
        width = self.store.flat.shape[1]
        offset, scale = torch.zeros(width), torch.ones(width)
        for key, (a, b, _) in self.store.columns.items():
            if obs_stats and key[0] in (K.OBS, K.NEXT) and key[-1] in obs_stats:
                offset[a:b] = torch.as_tensor(obs_stats[key[-1]]["offset"]).reshape(-1)
                scale[a:b] = torch.as_tensor(obs_stats[key[-1]]["scale"]).reshape(-1)
        if action_stats:
            a = self.store.columns[K.ACTION][0]
            for name in self.store.action_keys:
                st = action_stats[name]
                d = int(torch.as_tensor(st["offset"]).numel())
                offset[a:a + d] = torch.as_tensor(st["offset"]).reshape(-1)
                scale[a:a + d] = torch.as_tensor(st["scale"]).reshape(-1)
                a += d
        return offset.to(self.device), (1.0 / scale).to(self.device)

    # --- data-parallel slices and device placement --------------------------------------------------------
    def shard(self, rank: int, world: int) -> "WindowSampler":
        """Sample slice ``rank`` of ``world`` equal slices of each global batch of ``batch_size`` windows."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world size {world}")
        if self.batch_size % world:
            raise ValueError(f"batch size {self.batch_size} (the global batch) is not divisible by the number of "
                             f"processes {world}")
        self.rank, self.world = int(rank), int(world)
        return self

    @property
    def local_batch_size(self) -> int:
        """Windows per :meth:`sample` in this process."""
        return self.batch_size // self.world

    def set_device(self, device) -> "WindowSampler":
        """Serve batches on ``device`` (before :meth:`keep_on_device`)."""
        self.device = torch.device(device)
        if self.task_table is not None:
            self.task_table = self.task_table.to(self.device)
        if self._affine is not None:
            self._affine = tuple(t.to(self.device) for t in self._affine)
        return self

    def keep_on_device(self) -> "WindowSampler":
        """Copy the low-dim store (``store.flat``) and the window tables to ``self.device`` once; batches are then
        gathered there (images stay in the host store). Same windows, same values as the host path."""
        d = self.device
        self._flat = self.store.flat.to(d)
        self._offsets = self.store.offsets.to(d)
        self.starts, self.episode, self.lo, self.hi, self._first = (
            t.to(d) for t in (self.starts, self.episode, self.lo, self.hi, self._first))
        self.goal_row, self.rel = self.goal_row.to(d), self.rel.to(d)
        if self.task_ids is not None:
            self.task_ids, self.task_table = self.task_ids.to(d), self.task_table.to(d)
        self._idx_dev, self._perm_dev = d, None
        return self

    # --- index selection ---------------------------------------------------------------------------------
    def _next_windows(self) -> torch.Tensor:
        return self.next_windows(self.batch_size)

    def next_windows(self, n: int) -> torch.Tensor:
        """The next window indices of this process: its slice ``[rank * n / world, (rank + 1) * n / world)`` of the
        ``n`` every rank draws (all ``n`` in one process; a batch of ``batch_size`` is ``next_windows(batch_size)``)."""
        B = int(n)
        b = B // self.world
        lo = self.rank * b
        if not self.shuffle:
            w = torch.randint(len(self.starts), (B,), generator=self.generator)[lo:lo + b]
            return w if self._idx_dev is None else w.to(self._idx_dev)
        if self._perm is None or self._cursor + B > self._perm.shape[0]:
            n = len(self.starts)
            reps = -(-B // n)  # tiny datasets: concatenate permutations so one batch always fits
            self._perm = torch.cat([torch.randperm(n, generator=self.generator) for _ in range(reps)])
            self._cursor = 0
            self._perm_dev = None
        if self._idx_dev is not None and self._perm_dev is None:  # one copy per permutation, not per batch
            self._perm_dev = self._perm.to(self._idx_dev)
        perm = self._perm if self._idx_dev is None else self._perm_dev
        w = perm[self._cursor + lo:self._cursor + lo + b]
        self._cursor += B
        return w

    def sample(self) -> TensorDict:
        return self.gather(self._next_windows())

    def __iter__(self):
        while True:
            yield self.sample()

    # --- gather ------------------------------------------------------------------------------------------
    def gather(self, w: torch.Tensor) -> TensorDict:
        """The ``[len(w), T]`` TensorDict of windows ``w`` (indices into robomimic's window list)."""
        B, T = len(w), self.T
        if self._idx_dev is not None:
            w = w.to(self._idx_dev)
        episode = self.episode[w]
        if T == 1:  # single-step windows: the start row itself, always inside its demo (no clamping, no padding)
            flat_rows = self.starts[w]
            real = torch.ones((B, 1), dtype=torch.bool, device=flat_rows.device)
            first = self._first[w].unsqueeze(1)
        else:
            raw = self.starts[w].unsqueeze(1) + self.rel
            rows = torch.maximum(torch.minimum(raw, self.hi[w].unsqueeze(1)), self.lo[w].unsqueeze(1))
            flat_rows = rows.reshape(-1)
            real = raw == rows
            first = rows == self._offsets[episode].unsqueeze(1)
        block = self._flat[flat_rows].to(self.device, non_blocking=True)
        if self._affine is not None:
            block.sub_(self._affine[0]).mul_(self._affine[1])
        block = block.view(B, T, -1)
        cols = self.store.columns
        out = {}
        obs = {}
        for key in self._obs_keys:
            obs[key[1]] = _columns(block, cols[key], B, T)
        out[K.OBS] = obs
        nxt = {}
        if self._next_keys:
            nobs = {}
            for key in self._next_keys:
                nobs[key[2]] = _columns(block, cols[key], B, T)
            nxt[K.OBS] = nobs
        for key, tensor in self.store.uint8.items():
            g = take_rows(tensor, flat_rows.cpu()).to(self.device, non_blocking=True).view(B, T, *tensor.shape[1:])
            (obs if key[0] == K.OBS else nxt[K.OBS])[key[-1]] = g
        a, b, _ = cols[K.ACTION]
        out[K.ACTION] = block[..., a:b]
        if K.REWARD in cols:
            a, b, _ = cols[K.REWARD]
            nxt["reward"] = block[..., a:b]
            done = block[..., b:b + 1] != 0
            nxt["done"] = done
            nxt["terminated"] = done
        if nxt:
            out[K.NEXT] = nxt
        if K.MC_RETURN in cols:  # Monte-Carlo returns-to-go (modmimic.data.returns)
            a, b, _ = cols[K.MC_RETURN]
            out[K.MC_RETURN] = block[..., a:b]
        out[K.MASK[0]] = {K.MASK[1]: real.to(self.device)}
        out[K.IS_INIT] = first.to(self.device)
        out[K.INDEX] = _over_time(w.to(self.device), B, T)
        out[K.EPISODE] = _over_time(episode.to(self.device), B, T)
        if self.task_ids is not None:
            tid = self.task_ids[episode].to(self.device)
            emb = self.task_table[tid]
            out[K.TASK] = {"id": tid.unsqueeze(1).expand(B, T),
                           "embedding": emb.unsqueeze(1).expand(B, T, emb.shape[-1])}
        if self.goal_mode == "last":
            grow = self.goal_row[episode]
            gblock = self._flat[grow].to(self.device)
            if self._affine is not None:
                gblock.sub_(self._affine[0]).mul_(self._affine[1])
            goal = {}
            for key in self._next_keys:
                a, b, shape = cols[key]
                goal[key[2]] = gblock[:, a:b].view(B, 1, *shape).expand(B, T, *shape)
            for key, tensor in self.store.uint8.items():
                if key[0] == K.NEXT:
                    g = take_rows(tensor, grow.cpu()).to(self.device)
                    goal[key[-1]] = g.unsqueeze(1).expand(B, T, *g.shape[1:])
            out[K.GOAL] = goal
        # every entry is built here with the right shape and device: skip per-leaf validation
        return TensorDict._new_unsafe(out, batch_size=torch.Size([B, T]), device=self.device)

    # --- state (bit-exact resume) ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self._perm, "cursor": self._cursor}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm, self._cursor = state["perm"], int(state["cursor"])
        self._perm_dev = None


class WindowDataset(torch.utils.data.Dataset):
    """Map-style view for users who want a ``DataLoader``: item ``i`` is robomimic's window ``i`` as a ``[T]``
    TensorDict. ``__getitems__`` serves a whole batch with one gather, so
    ``DataLoader(ds, batch_size=B, shuffle=True, collate_fn=WindowDataset.collate)`` never collates per sample."""

    def __init__(self, sampler: WindowSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> TensorDict:
        return self.sampler.gather(torch.as_tensor([int(i)]))[0]

    def __getitems__(self, indices) -> TensorDict:
        return self.sampler.gather(torch.as_tensor(indices, dtype=torch.int64))

    @staticmethod
    def collate(batch):
        return batch if isinstance(batch, TensorDict) else torch.stack(list(batch))
