"""Asynchronous chunked execution: act at the control rate while the next action chunk is being computed.

A chunking policy (Diffusion Policy, flow policy, ACT, BC-Transformer with future actions) predicts, from the last
``obs_horizon`` observations, the actions of the next ``H`` steps. Run synchronously, the robot asks for a chunk,
waits for it (holding its last action), executes ``chunk_size`` actions, then asks again: every inference delay is a
pause, and the chunk is computed from an observation that is as old as the delay. :class:`ChunkExecutor` instead
keeps executing the queued chunk and asks for the next one as soon as the queue is short enough to be exhausted
within the delay; when the new chunk arrives ``d`` steps after the observation it was computed from, its first ``d``
actions belong to the past and are dropped, and the rest is merged with what is still queued:

* ``merge="latest"``: the newest chunk covering a step gives its action (LeRobot's async inference ``latest_only``);
* ``merge="ensemble"``: the weighted mean of every chunk covering the step, weights ``exp(ensemble_k * age)`` with
  ``age = step - t0`` of the chunk (ACT's temporal ensembling: ``exp(-k * i)``, ``i = 0`` the oldest proposal).

Needs only numpy: on a robot computer it drives :class:`modmimic.client.RemotePolicy` (``source=remote.predict_chunk``)
with a wall clock (each call is one control tick; a request runs on a background thread and its chunk is merged at
the first tick after it returns). In simulation, ``latency_steps=d`` replaces the wall clock by the environment's:
a request's chunk arrives exactly ``d`` steps (calls) after it was made, so success under latency is measured
reproducibly (``python -m modmimic.eval ... latency_ms=300``).

``source(window) -> [n, H, A]`` is called with ``window``: key -> ``[n, obs_horizon, *shape]`` (the last
observations of ``n`` environments, oldest first; the first observation of an episode fills its history, as the
in-process acting path does) and must not keep episode state: :meth:`modmimic.policy.RolloutPolicy.predict_chunk`,
:meth:`modmimic.client.RemotePolicy.predict_chunk`, or :class:`StepSource` around a policy that acts one step at a
time.

With ``latency_steps=0``, ``mode="sync"`` and ``merge="latest"`` the actions equal the in-process ``Chunked``
acting path's bit for bit (same chunks, same RNG use); ``mode="async"`` with the default ``refill_at`` does too,
since it then re-plans after ``chunk_size`` steps exactly as the synchronous path does.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np

MODES = ("sync", "async")
MERGES = ("latest", "ensemble")


def latency_to_steps(latency_ms: float, control_rate_hz: float) -> int:
    """Control steps an inference delay of ``latency_ms`` spans at ``control_rate_hz`` (rounded up: a chunk that
    arrives during a step is used from the next one)."""
    if latency_ms < 0 or not math.isfinite(latency_ms):
        raise ValueError(f"latency_ms must be a finite number >= 0, got {latency_ms}")
    if not control_rate_hz > 0:
        raise ValueError(f"the control rate must be positive, got {control_rate_hz}")
    return int(math.ceil(latency_ms * control_rate_hz / 1000.0 - 1e-9))


class StepSource:
    """A policy that acts one step at a time (BC, BC-RNN, ...) as a chunk source of one action: each environment
    gets its own fork of the policy (:meth:`~modmimic.policy.RolloutPolicy.fork`, so an RNN's hidden state follows
    only the observations it was asked about), or, for a policy that cannot fork (a remote one), one environment."""

    def __init__(self, policy):
        self.policy, self.forks = policy, []

    def start(self, num_envs: int) -> None:
        if hasattr(self.policy, "fork"):
            self.forks = [self.policy.fork() for _ in range(num_envs)]
        elif num_envs == 1:
            self.forks = [self.policy]
        else:
            raise ValueError(f"{self.policy!r} acts one step at a time and cannot be forked: with an inference delay "
                             "it drives one environment (num_envs=1)")
        for f in self.forks:
            f.start_episode(1)

    def reset(self, rows) -> None:
        for j in rows:
            self.forks[j].start_episode(1)

    def __call__(self, window: dict, rows) -> np.ndarray:
        out = [np.asarray(self.forks[j]({k: v[i, -1] for k, v in window.items()}), dtype=np.float32)
               for i, j in enumerate(rows)]
        return np.stack(out)[:, None]


class ChunkExecutor:
    """Executes a chunk source's actions one control step per call, with the :class:`~modmimic.policy.RolloutPolicy`
    call API (``start_episode(n)``, ``reset_envs(done)``, ``__call__(obs, batched_ob=False)``), so the rollout loop
    and a robot's control loop drive it unchanged.

    * ``source``: see the module doc; a :class:`StepSource` is started and reset with the episodes.
    * ``obs_shapes``: the policy's observation keys and per-step shapes (the rollout loop reads ``policy.obs_shapes``).
    * ``chunk_size``: actions executed from each chunk in ``sync`` mode (the acting path's ``action_horizon``);
      ``obs_horizon``: observations per window.
    * ``mode``: ``"sync"`` (ask when the queue is empty, hold the last action while waiting, execute the chunk from
      its first action) or ``"async"`` (time-aligned chunks, asked for while the queue still runs).
    * ``latency_steps``: the simulated inference delay in control steps; ``None`` means real time (wall clock,
      background thread).
    * ``action_dim``: the action width (what is held before the first chunk arrives).
    * ``refill_at``: async: ask for the next chunk once at most this many queued actions remain (the current
      step's included). Default ``max(delay, H - chunk_size)`` (``H`` the chunk length, ``delay`` the simulated one or, in real
      time, the last measured one), so chunks are re-planned every ``chunk_size`` steps when the delay allows, and
      just in time otherwise; ``merge="ensemble"`` defaults to every step (ACT).
    * ``horizon``: use at most this many actions of each chunk (ACT's temporal ensembling uses ``chunk_size``).
    * ``inpaint`` (async): send the source the actions that will be executed while the chunk is computed (the
      queue's next ``delay`` actions) as a decided prefix; a sampling policy (Diffusion Policy, flow policy)
      inpaints them, so the new chunk continues the motion the robot is making instead of jumping (the idea of
      real-time chunking, Black et al. 2025, with inpainting by replacement rather than guidance).
    * ``in_flight`` (async): requests an environment may have outstanding at once (default 1). With a delay longer
      than ``H - chunk_size`` one request at a time cannot keep the queue filled (each chunk brings ``H - delay``
      fresh actions per ``delay`` steps); more in flight pipeline the requests, when the server's throughput allows.
    * ``hold``: what to do when no chunk covers a step: ``"last"`` repeats the last action (zeros at an episode
      start), ``"zero"`` sends zeros. ``stalls`` counts such steps.
    """

    def __init__(self, source, obs_shapes: dict, action_dim: int, chunk_size: int, obs_horizon: int = 1,
                 mode: str = "async",
                 latency_steps: int | None = 0, refill_at: int | None = None, merge: str = "latest",
                 ensemble_k: float = 0.01, horizon: int | None = None, hold: str = "last", inpaint: bool = False,
                 in_flight: int = 1):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        if hold not in ("last", "zero"):
            raise ValueError(f"hold must be 'last' or 'zero', got {hold!r}")
        if chunk_size < 1 or obs_horizon < 1:
            raise ValueError(f"chunk_size and obs_horizon must be >= 1, got {chunk_size}, {obs_horizon}")
        if latency_steps is not None and latency_steps < 0:
            raise ValueError(f"latency_steps must be >= 0 or None (real time), got {latency_steps}")
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        if refill_at is not None and refill_at < 0:
            raise ValueError(f"refill_at must be >= 0, got {refill_at}")
        self.source, self.mode, self.merge, self.hold = source, mode, merge, hold
        self.obs_shapes = {k: tuple(v) for k, v in obs_shapes.items()}
        self.A, self.Ta, self.To, self.k = int(action_dim), int(chunk_size), int(obs_horizon), float(ensemble_k)
        if isinstance(source, StepSource):
            self.mode = "sync"  # one action per request: nothing to execute while the next one is computed
        self.delay, self.refill_at, self.horizon = latency_steps, refill_at, horizon
        self.inpaint = bool(inpaint) and self.mode == "async"
        self.in_flight = int(in_flight) if self.mode == "async" else 1
        self.policy = SimpleNamespace(obs_shapes=self.obs_shapes, goal_shapes={}, ac_dim=self.A)  # the rollout loop
        self.action_dim = self.A
        self.num_envs, self.stalls, self.requests = 0, 0, 0
        self.measured_delay = 0  # real time: steps the last request took
        self._pool = None
        self.start_episode(1)

    # --- episodes ------------------------------------------------------------------------------------------------
    def start_episode(self, num_envs: int = 1) -> None:
        self.num_envs = int(num_envs)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self.chunks = [[] for _ in range(self.num_envs)]  # per env: [(t0, [h, A] actions)], oldest first
        self.pending = [[] for _ in range(self.num_envs)]  # per env: [(t0, ready step or future, row)], oldest first
        self.hist = None
        self.fresh = np.ones(self.num_envs, dtype=bool)
        self.last = np.zeros((self.num_envs, self.A), dtype=np.float32)
        if hasattr(self.source, "start"):
            self.source.start(self.num_envs)

    def reset_envs(self, done) -> None:
        rows = np.flatnonzero(np.asarray(done, dtype=bool))
        for j in rows:
            self.t[j], self.chunks[j], self.pending[j], self.last[j] = 0, [], [], 0
        self.fresh[rows] = True
        if hasattr(self.source, "reset") and len(rows):
            self.source.reset(rows)

    # --- one control step ----------------------------------------------------------------------------------------
    def __call__(self, ob: dict, goal: dict | None = None, batched_ob: bool = False) -> np.ndarray:
        obs = {k: np.asarray(ob[k]) if batched_ob else np.asarray(ob[k])[None] for k in self.obs_shapes}
        B = next(iter(obs.values())).shape[0]
        if B != self.num_envs:
            self.start_episode(B)
        self._push(obs)
        self._deliver()
        due = [j for j in range(B) if len(self.pending[j]) < self.in_flight and self._wants(j)]
        if due:
            self._request(due)
            self._deliver()
        action = self._act()
        self.t += 1
        return action if batched_ob else action[0]

    def _push(self, obs: dict) -> None:
        """The observation enters each environment's history (a fresh one is filled with it)."""
        B = self.num_envs
        if self.hist is None:
            self.hist = {k: np.repeat(v[:, None], self.To, axis=1) for k, v in obs.items()}
        else:
            for k, v in obs.items():
                h = self.hist[k]
                h[:, :-1] = h[:, 1:].copy()
                h[:, -1] = v
                h[self.fresh] = v[self.fresh][:, None]
        self.fresh = np.zeros(B, dtype=bool)

    def _remaining(self, j: int) -> int:
        """Queued actions of environment ``j`` from the current step on (the current step's included)."""
        t = self.t[j]
        return max([t0 + len(c) - t for t0, c in self.chunks[j]] + [0])

    def _threshold(self, h: int) -> int:
        if self.refill_at is not None:
            return self.refill_at
        delay = self.measured_delay if self.delay is None else self.delay
        return max(delay, h - self.Ta)

    def _wants(self, j: int) -> bool:
        left = self._remaining(j)
        if self.merge == "ensemble" and self.refill_at is None:
            return True  # ACT: a new chunk every step
        if self.mode == "sync" or not self.chunks[j]:
            return left == 0
        return left <= self._threshold(len(self.chunks[j][-1][1]))

    def _decided(self, rows: list):
        """The actions each row will execute while a chunk asked for now is computed, ``[n, P, A]`` (P: the delay,
        or fewer when some row's queue is shorter), or None."""
        delay = self.measured_delay if self.delay is None else self.delay
        P = min([delay] + [self._remaining(j) for j in rows])
        if not self.inpaint or P < 1:
            return None
        return np.stack([[self._merged(j, self.t[j] + i) for i in range(P)] for j in rows]).astype(np.float32)

    def _request(self, rows: list) -> None:
        window = {k: v[rows] for k, v in self.hist.items()}
        prefix = self._decided(rows)
        self.requests += 1
        if self.delay is None:  # real time: the chunk is computed while the robot keeps acting
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="modmimic-chunk")
            fut = self._pool.submit(self._call_source, window, rows, prefix)
            for i, j in enumerate(rows):
                self.pending[j].append((int(self.t[j]), fut, i))
            return
        chunks = self._call_source(window, rows, prefix)
        for i, j in enumerate(rows):
            self.pending[j].append((int(self.t[j]), int(self.t[j]) + self.delay, chunks[i]))

    def _call_source(self, window: dict, rows: list, prefix=None) -> np.ndarray:
        if isinstance(self.source, StepSource):
            out = self.source(window, rows)
        else:
            out = self.source(window) if prefix is None else self.source(window, prefix=prefix)
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 3 or out.shape[0] != len(rows):
            raise ValueError(f"the chunk source returned shape {out.shape}; expected [{len(rows)}, H, A]")
        return out[:, :self.horizon] if self.horizon else out

    def _deliver(self) -> None:
        for j, waiting in enumerate(self.pending):
            while waiting:  # in the order they were asked for
                t0, when, row = waiting[0]
                if self.delay is None:
                    if not when.done():
                        break
                    chunk = when.result()[row]
                    self.measured_delay = int(self.t[j] - t0)
                else:
                    if when > self.t[j]:
                        break
                    chunk = row
                waiting.pop(0)
                if self.mode == "sync":  # the robot waited: execute the chunk from its first action
                    t0, chunk = int(self.t[j]), chunk[:self.Ta]
                self.chunks[j] = [(s, c) for s, c in self.chunks[j] if s + len(c) > self.t[j]] + [(t0, chunk)]

    def _merged(self, j: int, t: int):
        """The action the queued chunks of environment ``j`` give step ``t`` (None: no chunk covers it)."""
        cover = [(t - t0, c[t - t0]) for t0, c in self.chunks[j] if t0 <= t < t0 + len(c)]
        if not cover:
            return None
        if self.merge == "latest":
            return cover[-1][1]
        ages = np.array([age for age, _ in cover], dtype=np.float64)
        w = np.exp(self.k * (ages - ages.max()))
        return (np.stack([c for _, c in cover]) * (w / w.sum())[:, None]).sum(0)

    def _act(self) -> np.ndarray:
        acts = (self.last if self.hold == "last" else np.zeros_like(self.last)).copy()
        for j in range(self.num_envs):
            a = self._merged(j, self.t[j])
            if a is None:
                self.stalls += 1
            else:
                acts[j] = a
        self.last = acts
        return acts.copy()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def executor_for(policy, latency_steps: int | None = 0, mode: str = "async", merge: str | None = None,
                 refill_at: int | None = None, hold: str = "last", inpaint: bool = False,
                 in_flight: int = 1) -> ChunkExecutor:
    """A :class:`ChunkExecutor` driving ``policy`` (an in-process :class:`~modmimic.policy.RolloutPolicy` or a
    :class:`~modmimic.client.RemotePolicy`) as its acting path would: chunk size, observation history and, for
    temporal ensembling (ACT), every-step chunks of ``chunk_size`` actions merged with its ``ensemble_k``. A policy
    that acts one step at a time becomes a :class:`StepSource` (synchronous: nothing to execute while waiting)."""
    if getattr(policy.policy, "goal_shapes", None) or getattr(policy, "multi_task", False):
        raise ValueError("goal-conditioned and multi-task policies are not driven by the chunk executor yet")
    shapes = policy.policy.obs_shapes
    dim = policy.action_dim if policy.action_dim is not None else policy.policy.ac_dim
    spec = getattr(policy, "chunking", None)
    if spec is None:
        return ChunkExecutor(StepSource(policy), shapes, dim, 1, mode="sync", latency_steps=latency_steps,
                             hold=hold)
    te = bool(spec["temporal_ensemble"])
    def source(window, prefix=None):
        return policy.predict_chunk(window, batched_ob=True, prefix=prefix)

    return ChunkExecutor(source, shapes, dim,
                         spec["chunk_size"], spec["obs_horizon"], mode=mode, latency_steps=latency_steps,
                         refill_at=refill_at, merge=merge or ("ensemble" if te else "latest"),
                         ensemble_k=spec["ensemble_k"], horizon=spec["chunk_size"] if te else None, hold=hold,
                         inpaint=inpaint, in_flight=in_flight)
