"""Online interaction for offline-to-online fine-tuning (``python -m modmimic.finetune``), on torchrl.

* :class:`TorchRLEnv` — modmimic's vector environments (:mod:`modmimic.envs.vector`: in-process or one worker
  process each) as a torchrl ``EnvBase`` of batch size ``[K]``: observations at ``("observation", <obs key>)``,
  ``action``, ``("next", "reward" | "done" | "terminated" | "truncated" | "success")`` (modmimic's batch contract,
  :mod:`modmimic.keys`), so ``env.rollout(n, policy)`` and ``env.step_and_maybe_reset`` work on it. Episode ``i``
  (counted over all slots, in the order they start) starts from ``seed + i``. ``terminated``: the environment's
  done flag, or a success with ``terminate_on_success``; ``truncated``: ``horizon`` steps without termination.
* :class:`OnlineSampler` — a drop-in for the trainer's window sampler: each :meth:`~OnlineSampler.sample` first steps
  the environments with the exploring policy (a sample of the actor or, with ``online.explore_std``, the actor's
  evaluation action plus Gaussian noise of that std; clipped to the range of the dataset's actions; its share of
  ``online.env_steps_per_update`` transitions per gradient step, until the budget ``online.env_steps`` is spent),
  puts finished episodes into a torchrl
  ``TensorDictReplayBuffer`` (``LazyTensorStorage``), then returns ``[B, 1]`` windows: ``B - round(ratio * B)`` rows
  from the offline data, ``round(ratio * B)`` from the buffer (RLPD's symmetric sampling at ``ratio = 0.5``),
  normalized with the offline statistics. The training loop, evaluation, logging and checkpoints are
  :func:`modmimic.trainer.train`'s, unchanged.

Online rows follow the batch contract of the offline windows: ``("next", "done")`` is ``terminated`` (a time limit
is not an end: the critic bootstraps through it), ``mc_return`` the episode's discounted return-to-go (Cal-QL),
``index`` and ``episode`` are ``-1 - <buffer row>`` and ``-1 - <online episode>`` (negative: online data).

Resume. :meth:`OnlineSampler.state_dict` holds the buffer's rows and write cursor, its sampling generator, the offline
sampler's state, the counters, and for every environment slot the episode it plays and the actions taken since that
episode started. :meth:`~OnlineSampler.load_state_dict` refills the buffer and replays those actions from the
episodes' seeds, so the environments, and the transitions of unfinished episodes, are where they were: a resumed run
equals an uninterrupted one for any environment that is deterministic given its seed and actions (PointReach,
MuJoCo-based simulators on one machine). Nothing of a simulator's internal state is stored.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import Binary, Composite, LazyTensorStorage, TensorDictReplayBuffer, Unbounded
from torchrl.data.replay_buffers.samplers import RandomSampler
from torchrl.envs import EnvBase

from modmimic import keys as K

ONLINE_SEED = 300_000  # + train.seed: initial states that neither demo generation (0, ...) nor evaluation uses


# --- the environments as a torchrl env ---------------------------------------------------------------------------

def _obs_spec(obs_shapes: dict, K_: int) -> Composite:
    specs = {k: Unbounded(shape=(K_, *shape), dtype=torch.uint8 if len(shape) >= 3 else torch.float32)
             for k, shape in obs_shapes.items()}
    return Composite(specs, shape=(K_,))


class TorchRLEnv(EnvBase):
    """``envs`` (a :class:`~modmimic.envs.vector.LocalEnvs` or :class:`~modmimic.envs.vector.WorkerEnvs`) as a
    torchrl environment of batch size ``[len(envs)]``. ``obs_shapes``: the observation keys (and per-step shapes)
    it returns; ``action_dim``: the environment's action size. The environments are closed by :meth:`close`."""

    batch_locked = True

    def __init__(self, envs, obs_shapes: dict, action_dim: int, horizon: int, seed: int = 0,
                 terminate_on_success: bool = True):
        n = len(envs)
        super().__init__(batch_size=torch.Size([n]))
        self.envs, self.obs_shapes = envs, {k: tuple(v) for k, v in obs_shapes.items()}
        self.horizon, self.base_seed, self.terminate_on_success = int(horizon), int(seed), bool(terminate_on_success)
        self.observation_spec = Composite({K.OBS: _obs_spec(self.obs_shapes, n),
                                           "success": Binary(n=1, shape=(n, 1), dtype=torch.bool),
                                           K.EPISODE: Unbounded(shape=(n,), dtype=torch.int64)}, shape=(n,))
        self.action_spec = Unbounded(shape=(n, int(action_dim)), dtype=torch.float32)
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32)
        self.done_spec = Composite({k: Binary(n=1, shape=(n, 1), dtype=torch.bool)
                                    for k in ("done", "terminated", "truncated")}, shape=(n,))
        self.next_episode = 0  # episodes started so far: the next one starts from base_seed + next_episode
        self.slot_episode = [-1] * n  # the episode each slot plays
        self.slot_actions: list[list] = [[] for _ in range(n)]  # actions since that episode started (for resume)
        self._last = None  # the latest observation TensorDict ([n]) of every slot
        self._success = torch.zeros(n, 1, dtype=torch.bool)

    # --- conversion ------------------------------------------------------------------------------------------
    def _obs(self, obs: dict):
        return {k: torch.as_tensor(np.asarray(obs[k]), dtype=torch.uint8 if len(s) >= 3 else torch.float32
                                   ).reshape(s) for k, s in self.obs_shapes.items()}

    def _set_slot(self, j: int, obs: dict) -> None:
        for k, v in self._obs(obs).items():
            self._last[k][j] = v

    # --- torchrl EnvBase -------------------------------------------------------------------------------------
    def _set_seed(self, seed: int | None) -> None:
        self.base_seed = int(seed or 0)

    def _reset(self, tensordict=None, **kwargs):
        n = self.batch_size[0]
        mask = None if tensordict is None else tensordict.get("_reset", None)
        rows = range(n) if mask is None else [j for j in range(n) if bool(mask.reshape(n, -1)[j].any())]
        if self._last is None:
            self._last = TensorDict({k: torch.zeros(n, *s, dtype=torch.uint8 if len(s) >= 3 else torch.float32)
                                     for k, s in self.obs_shapes.items()}, batch_size=[n])
        started = []
        for j in rows:
            self.slot_episode[j], self.slot_actions[j] = self.next_episode, []
            self.envs.send(j, ("reset", self.base_seed + self.next_episode, None))
            self.next_episode += 1
            started.append(j)
        for j in started:
            self._set_slot(j, self.envs.recv(j)["obs"])
            self._success[j] = False
        false = torch.zeros(n, 1, dtype=torch.bool)
        return TensorDict({K.OBS: self._last.clone(), "success": self._success.clone(),
                           K.EPISODE: torch.as_tensor(self.slot_episode, dtype=torch.int64),
                           "done": false, "terminated": false.clone(), "truncated": false.clone()}, batch_size=[n])

    def _step(self, tensordict):
        n = self.batch_size[0]
        actions = tensordict.get(K.ACTION).detach().cpu()
        partial = tensordict.get("_step", None)
        rows = [j for j in range(n) if partial is None or bool(partial.reshape(n, -1)[j].any())]
        reward = torch.zeros(n, 1)
        terminated, truncated = torch.zeros(n, 1, dtype=torch.bool), torch.zeros(n, 1, dtype=torch.bool)
        for j in rows:
            self.envs.send(j, ("step", actions[j].numpy().astype(np.float64), None))
        for j in rows:
            ans = self.envs.recv(j)
            self.slot_actions[j].append(actions[j].clone())
            self._set_slot(j, ans["obs"])
            ok = bool(ans["success"]["task"])
            self._success[j] = ok
            reward[j] = float(ans["reward"])
            terminated[j] = bool(ans["done"]) or (self.terminate_on_success and ok)
            truncated[j] = not bool(terminated[j]) and len(self.slot_actions[j]) >= self.horizon
        return TensorDict({K.OBS: self._last.clone(), "success": self._success.clone(),
                           K.EPISODE: torch.as_tensor(self.slot_episode, dtype=torch.int64), "reward": reward,
                           "done": terminated | truncated, "terminated": terminated, "truncated": truncated},
                          batch_size=[n])

    # --- resume: replay the episodes in progress -------------------------------------------------------------
    def episode_state(self) -> dict:
        """What :meth:`restore` needs: the episode counter, and each slot's episode and actions so far."""
        return {"next_episode": int(self.next_episode), "slot_episode": [int(e) for e in self.slot_episode],
                "slot_actions": [torch.stack(a) if a else torch.zeros(0, self.action_spec.shape[-1])
                                 for a in self.slot_actions]}

    def restore(self, state: dict) -> tuple[TensorDict, list]:
        """Put every slot back into the episode it played, by replaying its actions from the episode's seed.
        Returns ``(the observation TensorDict to act on next, per slot the transitions replayed)`` (the rows
        :meth:`step` gave the first time, for a deterministic environment)."""
        n = self.batch_size[0]
        replayed = [[] for _ in range(n)]
        td = None
        for j in range(n):
            self.next_episode = int(state["slot_episode"][j])
            mask = torch.zeros(n, 1, dtype=torch.bool)
            mask[j] = True
            td = self.reset(TensorDict({"_reset": mask}, batch_size=[n]))
            for a in state["slot_actions"][j]:
                act = torch.zeros(n, self.action_spec.shape[-1])
                act[j] = a
                td.set(K.ACTION, act)
                td.set("_step", mask.clone())
                td = self.step(td)
                replayed[j].append(td[j].clone())
                td = td.get("next").exclude("reward", "done", "terminated", "truncated")
        self.next_episode = int(state["next_episode"])
        return self._reset_like(), replayed

    def _reset_like(self) -> TensorDict:
        """The current observation of every slot, as a root TensorDict to act on."""
        n = self.batch_size[0]
        false = torch.zeros(n, 1, dtype=torch.bool)
        return TensorDict({K.OBS: self._last.clone(), "success": self._success.clone(),
                           K.EPISODE: torch.as_tensor(self.slot_episode, dtype=torch.int64),
                           "done": false, "terminated": false.clone(), "truncated": false.clone()}, batch_size=[n])

    def close(self, *, raise_if_closed: bool = True) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None
        try:
            super().close(raise_if_closed=False)
        except TypeError:
            super().close()


def make_torchrl_env(env_meta: dict, obs_shapes: dict, num_envs: int = 1, horizon: int = 400, seed: int = 0,
                     terminate_on_success: bool = True, env_name: str | None = None, **make_kwargs) -> TorchRLEnv:
    """:class:`TorchRLEnv` over ``num_envs`` environments built from a dataset's (checkpoint's) env metadata (worker
    processes when ``num_envs > 1``)."""
    from modmimic.envs.vector import make_envs

    if env_name is not None:
        make_kwargs["env_name"] = env_name
    envs = make_envs(env_meta, num_envs, **make_kwargs)
    try:
        envs.send(0, ("info", None, None))
        info = envs.recv(0)
        return TorchRLEnv(envs, obs_shapes, info["action_dimension"], horizon, seed, terminate_on_success)
    except BaseException:
        envs.close()
        raise


# --- episodes -> buffer rows ---------------------------------------------------------------------------------------

def episode_rows(steps: list, discount: float) -> TensorDict:
    """One finished episode (the ``[K]``-row slices that ``env.step`` returned, one per step, in order) -> ``[T]``
    transitions with the batch contract's keys (observations raw), ``("next", "done")`` = terminated, and the
    discounted return-to-go ``mc_return`` (0 after the last step, as :mod:`modmimic.data.returns`)."""
    td = torch.stack([s.select(K.OBS, K.ACTION, ("next", K.OBS), ("next", "reward"), ("next", "terminated"),
                               ("next", "success"), K.EPISODE) for s in steps])
    T = td.batch_size[0]
    r = td.get(("next", "reward")).reshape(T).double()
    live = (~td.get(("next", "terminated")).reshape(T)).double()
    g, ret = 0.0, torch.empty(T, dtype=torch.float64)
    for t in range(T - 1, -1, -1):
        g = float(r[t]) + discount * float(live[t]) * g
        ret[t] = g
    td.set(("next", "done"), td.get(("next", "terminated")).clone())
    td.set(K.MC_RETURN, ret.float().unsqueeze(-1))
    td.set(K.IS_INIT, torch.arange(T) == 0)
    return td


def normalize(td: TensorDict, obs_stats: dict | None, action_stats: dict | None, action_keys: list) -> TensorDict:
    """Observations (current and next) and actions of raw rows normalized as the window sampler does."""
    out = td.clone(False)
    for group in ((K.OBS,), (K.NEXT, K.OBS)):
        obs = out.get(group).clone(False)
        for k in obs.keys():
            st = (obs_stats or {}).get(k)
            if st is not None:
                v = obs.get(k).float()
                off = torch.as_tensor(np.asarray(st["offset"]), dtype=torch.float32).reshape(v.shape[-1:] if v.dim()
                                                                                              > 1 else -1)
                sc = torch.as_tensor(np.asarray(st["scale"]), dtype=torch.float32).reshape(off.shape)
                obs.set(k, (v - off) / sc)
        out.set(group, obs)
    if action_stats:
        off = torch.cat([torch.as_tensor(np.asarray(action_stats[k]["offset"]), dtype=torch.float32).reshape(-1)
                         for k in action_keys])
        sc = torch.cat([torch.as_tensor(np.asarray(action_stats[k]["scale"]), dtype=torch.float32).reshape(-1)
                        for k in action_keys])
        out.set(K.ACTION, (out.get(K.ACTION) - off) / sc)
    return out


# --- the sampler the trainer draws from -----------------------------------------------------------------------------

def online_share(ratio: float, batch_size: int) -> int:
    """The online rows of a batch of ``batch_size``: ``round(ratio * batch_size)`` (the rest are offline)."""
    return int(round(float(ratio) * int(batch_size)))


class OnlineSampler:
    """Offline windows mixed with online transitions (see the module docstring). ``offline``: the trainer's window
    sampler (``train.seq_length = train.frame_stack = 1``); ``env``: a :class:`TorchRLEnv`; ``policy``: a
    TensorDict module reading the env's observations and writing ``action`` (the exploring policy,
    :func:`modmimic.policy.as_tensordict_module` with ``explore=True``)."""

    def __init__(self, offline, env: TorchRLEnv, policy, *, ratio: float = 0.5, env_steps: int = 10_000,
                 env_steps_per_update: float = 1.0, buffer_size: int | None = None, warmup_steps: int = 0,
                 discount: float = 0.99, seed: int = 0, obs_stats=None, action_stats=None, action_keys=("actions",),
                 with_mc_return: bool = False, action_range: tuple | None = None, explore_std: float | None = None):
        self.offline, self.env, self.policy = offline, env, policy
        self.explore_std = explore_std  # None: the policy samples; else its action + N(0, explore_std^2) per dimension
        self.batch_size = int(offline.batch_size)
        self.n_online = online_share(ratio, self.batch_size)
        self.budget, self.rate = int(env_steps), float(env_steps_per_update)
        # before the first update that mixes online rows, the buffer must hold a finished episode (or warmup_steps)
        self.warmup = max(int(warmup_steps), 1) if self.n_online else int(warmup_steps)
        self.discount, self.with_mc_return = float(discount), bool(with_mc_return)
        self.obs_stats, self.action_stats, self.action_keys = obs_stats, action_stats, list(action_keys)
        self.action_range = action_range  # (low, high) [A]: the data's actions; explored actions are clipped to it
        self.generator = torch.Generator().manual_seed(int(seed))
        capacity = int(buffer_size or env_steps)
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(capacity), sampler=RandomSampler(),
                                             batch_size=max(1, self.n_online), generator=self.generator)
        self.env_steps = self.episodes = self.successes = self.updates = 0
        self.owed = 0.0  # transitions due (env_steps_per_update per update) but not yet collected
        self.env_seconds = 0.0
        self._recent: list = []  # (length, success) of the episodes that ended since the last log
        self.pending: list[list] = [[] for _ in range(env.batch_size[0])]
        self.carry = None

    def __len__(self) -> int:
        return len(self.offline)

    # --- interaction -------------------------------------------------------------------------------------------
    def _act_and_step(self) -> None:
        if self.carry is None:
            self.carry = self.env.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            td = self.policy(self.carry.clone(False))
            if self.explore_std:
                a = td.get(K.ACTION)
                td.set(K.ACTION, a + self.explore_std * torch.randn(a.shape, generator=self.generator, dtype=a.dtype))
            if self.action_range is not None:  # a Gaussian's samples leave the range the data (and simulator) act in
                td.set(K.ACTION, torch.maximum(torch.minimum(td.get(K.ACTION), self.action_range[1]),
                                               self.action_range[0]))
        td, self.carry = self.env.step_and_maybe_reset(td)
        self.env_seconds += time.perf_counter() - t0
        n = td.batch_size[0]
        self.env_steps += n
        done = td.get(("next", "done")).reshape(n)
        for j in range(n):
            self.pending[j].append(td[j].clone())
            if bool(done[j]):
                self._finish(j)

    def _finish(self, j: int) -> None:
        rows = episode_rows(self.pending[j], self.discount)
        self.pending[j] = []
        success = bool(rows.get(("next", "success")).any())
        self.episodes += 1
        self.successes += int(success)
        self._recent.append((rows.batch_size[0], success))
        self.buffer.extend(rows.exclude(("next", "success")))

    def collect(self) -> None:
        """Step the environments for this update's share of transitions (and, before the first update, until the
        buffer holds ``warmup_steps``), within the budget."""
        self.owed += self.rate
        n = self.env.batch_size[0]
        while self.env_steps + n <= self.budget and (self.owed >= n or len(self.buffer) < self.warmup):
            self._act_and_step()
            self.owed -= n
        if self.env_steps + n > self.budget:
            self.owed = 0.0

    # --- batches ------------------------------------------------------------------------------------------------
    def online_windows(self, n: int) -> TensorDict:
        rows = self.buffer.sample(n)
        idx = rows.get("index") if "index" in rows.keys() else None
        rows = rows.exclude("index")
        rows = normalize(rows, self.obs_stats, self.action_stats, self.action_keys)
        out = {K.OBS: rows.get(K.OBS).to_dict(), K.ACTION: rows.get(K.ACTION),
               K.NEXT: {K.OBS: rows.get((K.NEXT, K.OBS)).to_dict(), "reward": rows.get((K.NEXT, "reward")),
                        "done": rows.get((K.NEXT, "done")), "terminated": rows.get((K.NEXT, "done")).clone()},
               K.MASK[0]: {K.MASK[1]: torch.ones(n, dtype=torch.bool)},
               K.IS_INIT: rows.get(K.IS_INIT), K.INDEX: -1 - (idx if idx is not None else torch.zeros(n, dtype=torch.long)),
               K.EPISODE: -1 - rows.get(K.EPISODE).long()}
        if self.with_mc_return:
            out[K.MC_RETURN] = rows.get(K.MC_RETURN)
        return TensorDict(out, batch_size=[n]).unsqueeze(1)

    def sample(self) -> TensorDict:
        self.collect()
        self.updates += 1
        n_on = self.n_online if len(self.buffer) > 0 else 0
        off = self.offline.gather(self.offline.next_windows(self.batch_size - n_on))
        if n_on == 0:
            return off
        on = self.online_windows(n_on).to(off.device)
        keys = set(off.keys(True, True))
        on = on.select(*[k for k in on.keys(True, True) if k in keys])
        return torch.cat([off, on.to(off.device)], 0)

    # --- logging ------------------------------------------------------------------------------------------------
    def log_info(self) -> dict:
        """``Online/*`` scalars of the episodes that ended since the last call, and the totals."""
        recent, self._recent = self._recent, []
        out = {"Online/Env_Steps": float(self.env_steps), "Online/Episodes": float(self.episodes),
               "Online/Buffer_Size": float(len(self.buffer)),
               "Online/Env_Steps_per_Second": self.env_steps / self.env_seconds if self.env_seconds > 0 else 0.0}
        if recent:
            out["Online/Success_Rate"] = float(np.mean([s for _, s in recent]))
            out["Online/Episode_Length"] = float(np.mean([n for n, _ in recent]))
        return out

    # --- state (bit-exact resume) -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        n = len(self.buffer)
        storage = self.buffer.storage
        rows = storage.get(torch.arange(n)).to_dict() if n else None
        return {"offline": self.offline.state_dict(), "buffer_rows": rows, "buffer_len": n,
                "buffer_cursor": int(getattr(self.buffer.writer, "_cursor", n)),
                "generator": self.generator.get_state(), "env": self.env.episode_state(),
                "counters": {"env_steps": self.env_steps, "episodes": self.episodes, "successes": self.successes,
                             "updates": self.updates, "owed": float(self.owed), "env_seconds": float(self.env_seconds)},
                "started": self.carry is not None}

    def load_state_dict(self, state: dict) -> None:
        self.offline.load_state_dict(state["offline"])
        self.buffer.empty()
        if state["buffer_rows"] is not None:
            n = int(state["buffer_len"])
            self.buffer.extend(TensorDict(state["buffer_rows"], batch_size=[n]))
            self.buffer.writer._cursor = int(state["buffer_cursor"])
        self.generator.set_state(state["generator"])
        c = state["counters"]
        self.env_steps, self.episodes, self.successes = int(c["env_steps"]), int(c["episodes"]), int(c["successes"])
        self.updates, self.owed, self.env_seconds = int(c["updates"]), float(c["owed"]), float(c["env_seconds"])
        if state["started"]:
            self.carry, replayed = self.env.restore(state["env"])
            self.pending = replayed
        else:
            self.carry = None

    def keep_on_device(self):
        self.offline.keep_on_device()
        return self

    def close(self) -> None:
        self.env.close()


def online_settings(cfg) -> dict:
    """The ``online`` section with its defaults filled in and checked (:class:`~modmimic.config.ConfigError`)."""
    from omegaconf import ListConfig

    from modmimic.config import ConfigError

    o = dict(cfg.online)
    unknown = [k for k in o if k not in ONLINE_DEFAULTS]
    if unknown:
        raise ConfigError(f"online: unknown keys {unknown}; the online section has {', '.join(ONLINE_DEFAULTS)}")
    o = {**ONLINE_DEFAULTS, **o}
    for k in ("env_steps", "num_envs"):
        if not isinstance(o[k], int) or isinstance(o[k], bool) or o[k] < 1:
            raise ConfigError(f"online.{k} must be a positive int, got {o[k]!r}")
    for k in ("buffer_size", "horizon"):
        if o[k] is not None and (not isinstance(o[k], int) or isinstance(o[k], bool) or o[k] < 1):
            raise ConfigError(f"online.{k} must be a positive int or null, got {o[k]!r}")
    if not isinstance(o["warmup_steps"], int) or o["warmup_steps"] < 0:
        raise ConfigError(f"online.warmup_steps must be an int >= 0, got {o['warmup_steps']!r}")
    if not isinstance(o["ratio"], (int, float)) or isinstance(o["ratio"], bool) or not 0 <= o["ratio"] <= 1:
        raise ConfigError(f"online.ratio (the share of online rows in a batch) must be in [0, 1], got {o['ratio']!r}")
    names = [u.get("name") for u in (cfg.get("updates") or [])]
    batch = int(cfg.train.batch_size)
    n_online = online_share(o["ratio"], batch)  # as OnlineSampler splits each batch
    for key, empty in (("offline_rows", n_online == batch), ("online_rows", n_online == 0)):
        rows = o[key]
        rows = list(rows) if isinstance(rows, (list, tuple, ListConfig)) else rows
        if not isinstance(rows, list) or not all(isinstance(n, str) for n in rows):
            raise ConfigError(f"online.{key} must be a list of update names, got {rows!r}")
        unknown = [n for n in rows if n not in names]
        if unknown:
            raise ConfigError(f"online.{key} names update {unknown[0]!r}, which the recipe does not have "
                              f"(updates: {names})")
        if rows and empty:
            raise ConfigError(f"online.{key}={rows} with online.ratio={o['ratio']} ({n_online} of {batch} rows "
                              f"online): those updates would have no rows")
        o[key] = rows
    both = [n for n in o["offline_rows"] if n in o["online_rows"]]
    if both:
        raise ConfigError(f"online.offline_rows and online.online_rows both name update {both[0]!r}")
    e = o["explore_std"]
    if e is not None and (not isinstance(e, (int, float)) or isinstance(e, bool) or not 0 <= e < math.inf):
        raise ConfigError(f"online.explore_std must be a number >= 0 or null (sample the actor), got {e!r}")
    r = o["env_steps_per_update"]
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not r > 0 or not math.isfinite(r):
        raise ConfigError(f"online.env_steps_per_update must be a number > 0, got {r!r}")
    t = cfg.train
    if t.seq_length != 1 or t.frame_stack != 1:
        raise ConfigError(f"fine-tuning trains on single transitions: train.seq_length and train.frame_stack must be "
                          f"1 (got {t.seq_length} and {t.frame_stack}; n-step and sequence recipes are not supported)")
    return o


ONLINE_DEFAULTS = {"env_steps": 10_000, "ratio": 0.5, "num_envs": 1, "env_steps_per_update": 1.0,
                   "buffer_size": None, "warmup_steps": 0, "horizon": None, "explore_std": None, "offline_rows": [],
                   "online_rows": []}


def data_action_range(store) -> tuple:
    """``(low, high)``: the per-dimension range of the dataset's (raw) actions."""
    a, b, _ = store.columns[K.ACTION]
    acts = store.flat[:, a:b]
    return acts.min(0).values.float(), acts.max(0).values.float()


def rewarded_after_success(store) -> int:
    """How many of ``store``'s demos are rewarded on more than one step (robomimic's and ``modmimic.demos``'
    successful demos keep the success reward on their last steps)."""
    if K.REWARD not in store.columns:
        return 0
    a, b, _ = store.columns[K.REWARD]
    rewarded = (store.flat[:, a:b] > 0).any(-1).long()
    ends = torch.cumsum(rewarded, 0)[store.offsets + store.lengths - 1]
    per_demo = ends - torch.cat([ends.new_zeros(1), ends[:-1]])
    return int((per_demo > 1).sum())


def reward_semantics_note(cfg, n_rewarded_after_success: int) -> str | None:
    """A warning when online episodes end at their first success but the offline data's successes are not terminal:
    the data then values a success at the sum of its remaining rewards (~6 for 6 rewarded steps), an online
    episode at one reward, and the two halves of each batch disagree (measured on mixed Lift: IQL fine-tuning fell
    from 0.74 to 0.08 in 5 000 steps; with ``batch.terminal_reward`` it held 0.70)."""
    if not n_rewarded_after_success or not bool(cfg.experiment.rollout.terminate_on_success):
        return None
    if (cfg.get("batch") or {}).get("terminal_reward") is not None:
        return None
    return (f"{n_rewarded_after_success} demos are rewarded on several steps after their first success, while "
            "online episodes end at their first (experiment.rollout.terminate_on_success): offline and online rows "
            "disagree on what a success is worth. Train the offline policy with +batch.terminal_reward=<the success "
            "reward> (a rewarded step ends its episode) and fine-tune that (docs/learning.md)")


def mark_rows(cfg) -> None:
    """``online.offline_rows`` and ``online.online_rows`` (update names, checked by :func:`online_settings`) written
    into the recipe's updates as ``rows: offline`` / ``rows: online`` (:class:`modmimic.program.Update`), before the
    algorithm is built: the builder checks them as any recipe's, and the run's stored config holds them, so a resume
    trains the same way."""
    from omegaconf import open_dict

    o = online_settings(cfg)
    source = {**{n: "offline" for n in o["offline_rows"]}, **{n: "online" for n in o["online_rows"]}}
    with open_dict(cfg):
        for u in cfg.updates:
            if u.get("name") in source:
                u.rows = source[u.get("name")]


def attach(data, algo, cfg, group=None):
    """Replace ``data.train_sampler`` by an :class:`OnlineSampler` over the dataset's environment (``cfg.online``):
    the exploring policy is ``algo``'s acting path with its networks in training mode (a sample of the actor's
    distribution)."""
    from omegaconf import OmegaConf

    from modmimic.config import ConfigError
    from modmimic.data.build import action_settings, sampler_seed
    from modmimic.envs import update_env_meta
    from modmimic.policy import RolloutPolicy, as_tensordict_module

    o = online_settings(cfg)
    note = reward_semantics_note(cfg, rewarded_after_success(data.train_store))
    if note:
        import warnings

        warnings.warn(note, stacklevel=2)
    if group is not None and group.active:
        raise ConfigError("online fine-tuning runs in one process (not under torchrun)")
    if data.names:
        raise ConfigError("online fine-tuning takes one dataset in train.data, not a co-training list")
    if getattr(data, "task_vocab", None) is not None:
        raise ConfigError("online fine-tuning takes single-task policies (this one is conditioned on tasks)")
    action_keys, action_config = action_settings(cfg.train)
    if any((action_config.get(k) or {}).get("format") for k in action_keys):
        raise ConfigError("online fine-tuning does not support train.action_config formats (rot_6d actions)")
    normalized = any((action_config.get(k) or {}).get("normalization") not in (None, "none", "None")
                     for k in action_keys)
    action_stats = data.action_normalization_stats if normalized else None
    r = cfg.experiment.rollout
    meta = update_env_meta(data.env_meta, OmegaConf.to_container(cfg.experiment.env_meta_update_dict, resolve=True))
    env = make_torchrl_env(meta, algo.obs_shapes, o["num_envs"], horizon=o["horizon"] or int(r.horizon),
                           seed=ONLINE_SEED + int(cfg.train.seed), terminate_on_success=bool(r.terminate_on_success),
                           env_name=cfg.experiment.env or None)
    rp = RolloutPolicy(algo, data.obs_normalization_stats, action_stats, action_keys, action_config)
    policy = as_tensordict_module(rp, explore=o["explore_std"] is None)  # fixed noise: around the evaluation action
    data.train_sampler = OnlineSampler(
        data.train_sampler, env, policy, ratio=float(o["ratio"]), env_steps=o["env_steps"],
        env_steps_per_update=float(o["env_steps_per_update"]), buffer_size=o["buffer_size"],
        warmup_steps=o["warmup_steps"], discount=float(cfg.algo.get("discount", 0.99)),
        seed=sampler_seed(int(cfg.train.seed), 9), obs_stats=data.obs_normalization_stats,
        action_stats=action_stats, action_keys=action_keys,
        with_mc_return=K.MC_RETURN in data.train_store.columns, action_range=data_action_range(data.train_store),
        explore_std=None if o["explore_std"] is None else float(o["explore_std"]))
    return data
