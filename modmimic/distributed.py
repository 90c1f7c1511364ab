"""Training on several processes (``torchrun --nproc-per-node N -m modmimic.train ...``): DDP per update.

A recipe's step is a sequence of updates (IQL: value, critic, actor; CQL: actor + entropy weight, then critic + CQL
weight), each with its own backward and optimizer step. ``nn.parallel.DistributedDataParallel`` ties gradient
synchronisation to one wrapped module's forward/backward, which fits neither several updates per step nor
parameters that live outside a module call (CQL's log-alpha and Lagrange weight are :class:`Scalar` networks called
without a batch). So modmimic synchronises explicitly, which is what DDP does underneath:

* the program gets a ``grad_sync`` hook (:class:`GradSync`), which :func:`modmimic.program.run_step` calls after each
  update's backward and before its clipping and optimizer steps: the gradients of every parameter its optimizers
  step are averaged over the ranks with ONE flat ``all_reduce`` per update (per dtype). Every rank then clips and
  steps the same averaged gradient from the same parameters, so parameters, optimizer states and the polyak targets
  stay identical on every rank with no further communication;
* start-up: every rank builds the networks from the same seed, then rank 0's parameters and buffers are broadcast
  (:func:`broadcast_state`), so the ranks start identical even if a builder draws from another RNG;
* sampling: ``train.batch_size`` is the GLOBAL batch of one gradient step (the batch a single-process run with the
  same config samples). Every rank walks the same seeded permutation of all windows and takes its own slice of each
  global batch (:meth:`modmimic.data.sampler.WindowSampler.shard`): the ranks' batches are disjoint and their union
  is exactly the single-process batch, so a deterministic recipe learns on N processes what it learns on one, up to
  float rounding. ``train.batch_size`` must be divisible by the number of processes;
* loss noise (sampled actions, dropout) comes from the torch RNG, which rank ``r > 0`` reseeds with a stream of its
  own after the networks are built (rank 0 keeps the single-process stream);
* rank 0 alone writes the run directory, logs and checkpoints; metrics are averaged over the ranks; a checkpoint
  holds every rank's RNG state (``trainer_state["rng_ranks"]``), and the sampler state is the same on every rank.

Backends: ``gloo`` on CPU, ``nccl`` on CUDA (each rank on ``cuda:<LOCAL_RANK>``). Not synchronised: BatchNorm running
statistics (no recipe uses BatchNorm).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Group:
    """Where this process stands: ``rank`` of ``world`` processes, and the device it trains on."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_init: bool = False  # this module called init_process_group (and destroys it in close())

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (no-ops on one process) ---------------------------------------------------------------------
    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every rank (pickled between this run's own processes, never user data)."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean_metrics(self, metrics: dict) -> dict:
        """Float metrics averaged over the ranks (every rank has the same keys); others pass unchanged."""
        if not self.active:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        names = self.all_gather_object(keys)
        if any(n != keys for n in names):
            raise RuntimeError(f"ranks logged different metrics: {[sorted(set(n) ^ set(keys)) for n in names]}")
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        out = dict(metrics)
        out.update(zip(keys, (t / self.world).tolist()))
        return out

    def close(self) -> None:
        if self.owns_init and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_init = False


SINGLE = Group()


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: torch.device) -> Group:
    """This process's :class:`Group`. Under torchrun (``WORLD_SIZE > 1``) the process group is created from the
    environment (``gloo`` on CPU, ``nccl`` on CUDA, each rank on ``cuda:<LOCAL_RANK>``); a process group made by the
    caller (tests: ``init_process_group(init_method="tcp://...")``) is used as it is. One process: :data:`SINGLE`."""
    owns = False
    if not dist.is_initialized():
        if launched_world_size() <= 1:
            return Group(device=device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        owns = True
    world, rank = dist.get_world_size(), dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    if world > 1 and device.type == "cpu" and dist.get_backend() == "nccl":
        raise RuntimeError("device=cpu with an nccl process group: nccl needs CUDA tensors")
    return Group(rank=rank, world=world, local_rank=local, device=device, owns_init=owns)


# --- gradients ------------------------------------------------------------------------------------------------------

class GradSync:
    """``program.grad_sync``: after an update's backward, average the gradients of every parameter its optimizers
    step over the ranks, in one flat ``all_reduce`` per dtype. A parameter without a gradient on every rank keeps
    ``None`` (so Adam skips it, as on one process); one with a gradient on some ranks gets the average with the
    missing ones counted as zero."""

    def __init__(self, group: Group):
        self.group = group
        self._params: dict = {}

    def params(self, program, update) -> list:
        key = (update.prefix, update.name)
        if key not in self._params:
            seen, out = set(), []
            for path in update.optimizers:
                for g in program.optimizers[path].param_groups:
                    for p in g["params"]:
                        if id(p) not in seen:
                            seen.add(id(p))
                            out.append(p)
            self._params[key] = out
        return self._params[key]

    @torch.no_grad()
    def __call__(self, program, update) -> None:
        if not self.group.active:
            return
        by_dtype: dict = {}
        for p in self.params(program, update):
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, params in by_dtype.items():
            average_grads(params, self.group.world)


@torch.no_grad()
def average_grads(params: list, world: int) -> None:
    """``p.grad <- mean over ranks`` for ``params`` (same dtype and device), with one ``all_reduce``: the flattened
    gradients (zeros for ``None``) followed by one presence flag per parameter."""
    dev, dtype = params[0].device, params[0].dtype
    present = [p.grad is not None for p in params]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [torch.tensor(present, dtype=dtype, device=dev)])
    dist.all_reduce(flat)
    n_grad = flat.numel() - len(params)
    grads = flat[:n_grad].div_(world)
    anywhere = present if all(present) else [c > 0 for c in flat[n_grad:].tolist()]  # host sync only when needed
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if anywhere[i]:
            g = grads[offset:offset + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


@torch.no_grad()
def broadcast_state(module: torch.nn.Module, group: Group, src: int = 0) -> None:
    """Every parameter and buffer of ``module`` (targets included) from rank ``src`` to all ranks."""
    if not group.active:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def rank_seed(seed: int, rank: int) -> int:
    """The torch/numpy/random seed of rank ``rank > 0`` (rank 0 keeps ``seed``: one process is unchanged)."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), 104729, int(rank)]).generate_state(1)[0])


def attach(algo, group: Group) -> None:
    """Make ``algo`` train data-parallel over ``group``: identical start (rank 0's state broadcast) and per-update
    gradient averaging (``program.grad_sync``)."""
    if not group.active:
        return
    broadcast_state(algo.program.nets, group)
    algo.program.grad_sync = GradSync(group)


def check_batch_size(batch_size: int, group: Group) -> None:
    """``train.batch_size`` (the global batch) must split evenly over the ranks."""
    from modmimic.config import ConfigError

    if group.active and int(batch_size) % group.world:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch of one gradient step and must be "
                          f"divisible by the number of processes ({group.world}); each process samples "
                          f"batch_size / {group.world} windows. Use e.g. train.batch_size="
                          f"{max(group.world, int(batch_size) // group.world * group.world)}")


def shard_data(data, group: Group) -> None:
    """Every rank samples its own slice of each global batch (train and validation samplers)."""
    if not group.active:
        return
    data.train_sampler.shard(group.rank, group.world)
    if data.valid_sampler is not None:
        data.valid_sampler.shard(group.rank, group.world)


def episode_share(n: int, group: Group) -> list[int]:
    """Distributed evaluation: the episode indices this rank plays (episode ``i`` on rank ``i mod N``)."""
    return list(range(group.rank, int(n), group.world))


def gather_episodes(episodes: list, group: Group) -> list:
    """Every rank's episodes, in index order, on every rank."""
    if not group.active:
        return list(episodes)
    out = [e for part in group.all_gather_object(list(episodes)) for e in part]
    return sorted(out, key=lambda e: e.index)


# --- the training loop's helpers --------------------------------------------------------------------------------------

class NullLogger:
    """The run logger of ranks other than 0 (rank 0 writes the logs)."""

    def record(self, *a, **k) -> None:
        pass

    def log_video(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass

    def discard(self) -> None:
        pass


class silenced:
    """Context manager: ``sys.stdout`` goes nowhere while active (ranks other than 0 print nothing)."""

    def __init__(self, enabled: bool):
        self.enabled, self._saved, self._null = enabled, None, None

    def __enter__(self):
        import sys

        if self.enabled:
            self._saved, self._null = sys.stdout, open(os.devnull, "w")
            sys.stdout = self._null
        return self

    def __exit__(self, *exc):
        import sys

        if self._saved is not None:
            sys.stdout = self._saved
            self._null.close()
        return False


def build_data_shared(build, cfg, device, group: Group):
    """``build(cfg, device)`` on every rank, except for a memory-mapped store (``train.hdf5_memmap_dir``): rank 0
    writes the file once and the other ranks map the same file (its pages are shared through the page cache; the
    samplers travel by file name, not by value). An error on rank 0 is raised on every rank."""
    if not group.active or not cfg.train.get("hdf5_memmap_dir"):
        return build(cfg, device)
    data, error = None, None
    if group.is_main:
        try:
            data = build(cfg, "cpu")  # moved to each rank's device below
        except Exception as e:  # noqa: BLE001 - re-raised on every rank
            error = e
    data, error = group.broadcast_object((data, error) if group.is_main else None)
    if error is not None:
        raise error
    for s in (data.train_sampler, data.valid_sampler):
        if s is not None:
            s.set_device(device)
    return data


def restore_rank_rng(trainer_state: dict, group: Group, seed: int, set_rng_state, seed_everything) -> str | None:
    """On resume, rank ``r`` continues its own RNG stream (``trainer_state["rng_ranks"][r]``); rank 0's is the
    checkpoint's ``rng``. Returns a warning when the run was saved with another number of processes (then ranks
    without a saved stream start a fresh one and the run is not bit-exact w.r.t. an uninterrupted one)."""
    saved = int(trainer_state.get("world_size", 1))
    ranks = trainer_state.get("rng_ranks") or []
    if group.rank > 0:
        if group.rank < len(ranks):
            set_rng_state(ranks[group.rank])
        else:
            seed_everything(rank_seed(seed, group.rank))
    if saved != group.world:
        return (f"this run was saved with {saved} process(es) and resumes with {group.world}: parameters, optimizers "
                "and the sampler continue exactly, the per-process random streams do not")
    return None


class _MainOnlyRollouts:
    """A rollout function that knows nothing of ranks: rank 0 plays every episode, the others receive its result."""

    def __init__(self, fn, group: Group):
        self.fn, self.group = fn, group

    def __getattr__(self, name):  # env_name, videos, ...
        return getattr(self.fn, name)

    def _on_main(self, call, *args, **kwargs):
        """``call(*args, **kwargs)`` on rank 0; its result, or its exception, on every rank."""
        out, error = None, None
        if self.group.is_main:
            try:
                out = call(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - raised on every rank
                error = e
        out, error = self.group.broadcast_object((out, error))
        if error is not None:
            raise error
        return out

    def prepare(self, cfg, env_meta):
        if not hasattr(self.fn, "prepare"):
            return None
        return self._on_main(self.fn.prepare, cfg, env_meta)

    def __call__(self, policy, epoch, cfg, env_meta, run_dir=None):
        return self._on_main(self.fn, policy, epoch, cfg, env_meta, run_dir=run_dir)

    def close(self):
        if hasattr(self.fn, "close"):
            self.fn.close()


def shared_rollouts(rollout_fn, group: Group):
    """The training loop's rollout hook on ``group``: a hook with a ``group`` attribute (the default
    :class:`modmimic.rollout.TrainingRollouts`) splits the episodes over the ranks; any other runs on rank 0."""
    if not group.active or rollout_fn is None:
        return rollout_fn
    if hasattr(rollout_fn, "group"):
        rollout_fn.group = group
        return rollout_fn
    return _MainOnlyRollouts(rollout_fn, group)
