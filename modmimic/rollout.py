"""Rollouts: a policy acting in environments, one environment in this process or ``K`` in worker processes.

:func:`run_episodes` plays ``n`` episodes of at most ``horizon`` steps. Episode ``i`` starts from ``seed + i``
(or from ``initial_states[i]``), whichever environment slot plays it, so serial and parallel evaluation see the same
initial states. Each step gathers the observations of all ``K`` slots, asks the policy once for a ``[K, A]`` batch of
actions (``RolloutPolicy(..., batched_ob=True)``), and steps every slot that is playing an episode. When a slot's
episode ends (success with ``terminate_on_success``, the environment's done flag, or the horizon), its policy state
(RNN hidden state, observation context) is reset with ``policy.reset_envs(mask)`` and it starts the next episode;
the other slots carry on undisturbed.

Per episode: success (any step was a success, robomimic's OR-accumulation), return, length, and with ``record`` the
trajectory in robomimic's dataset layout (see :func:`write_episodes`). ``summarize`` gives robomimic's rollout
metrics plus a 95 % Wilson interval for the success rate.

Note on "equal to serial": on CPU, a matrix product's rows can differ in the last bits with the batch size, so a
``K``-environment batch gives actions equal to the serial ones up to float rounding (~1e-7); episode outcomes match.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from modmimic.envs import NO_SUCCESS_SIGNAL, EnvError
from modmimic.envs.base import GYM_TYPE
from modmimic.envs.vector import LocalEnvs, make_envs


class RolloutError(ValueError):
    """A policy and an environment do not fit together (observation keys or shapes, action size, goals)."""


class NoSuccessSignalWarning(UserWarning):
    """The environment reports no success signal: every episode counts as a failure."""


_WARNED_NO_SUCCESS: set = set()  # env names warned about in this process


def warn_no_success_signal(info: dict) -> bool:
    """Warn, once per environment name and process, when an environment (its ``"info"`` answer) reports no success
    signal; returns whether it warned."""
    if info.get("success_signal") != NO_SUCCESS_SIGNAL or info["name"] in _WARNED_NO_SUCCESS:
        return False
    _WARNED_NO_SUCCESS.add(info["name"])
    warnings.warn(f"environment {info['name']!r} reports no success signal (no info['is_success'], "
                  "info['success'] or _check_success()): its success rate reads 0 whatever the policy does. Name the "
                  "signal in the dataset's env_args, e.g. \"success\": \"<info key>\" or {\"fn\": \"module.function\"} "
                  "(or +experiment.env_meta_update_dict.success=<key> when training)", NoSuccessSignalWarning,
                  stacklevel=3)
    return True


@dataclass
class Episode:
    index: int
    seed: int | None
    success: bool
    ret: float
    length: int
    slot: int = 0
    wall: float = 0.0
    task: str | None = None  # the task given to the policy, else the one the environment reports (task sets)
    trajectory: dict | None = field(default=None, repr=False)
    metrics: dict = field(default_factory=dict)  # per task metric of the env's is_success() (PushT's coverage): max


def track_metrics(metrics: dict, success: dict) -> None:
    """Keep in ``metrics`` the episode's maximum of each number an environment's ``is_success()`` gives beside
    ``task`` (PushT's ``coverage``: LeRobot's "max overlap")."""
    for k, v in success.items():
        if k != "task" and isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_)):
            metrics[k] = max(metrics.get(k, -math.inf), float(v))


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate ``k / n`` (sensible at 0 and n, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(episodes: list[Episode]) -> dict:
    """robomimic's rollout metrics (``Success_Rate``, ``Return``, ``Horizon``) and a few more."""
    n = len(episodes)
    k = sum(e.success for e in episodes)
    lo, hi = wilson_interval(k, n)
    rets = np.array([e.ret for e in episodes], dtype=np.float64)
    lens = np.array([e.length for e in episodes], dtype=np.float64)
    return {"Success_Rate": k / n if n else float("nan"), "Success_Rate_CI95_Low": lo, "Success_Rate_CI95_High": hi,
            "Num_Success": int(k), "Num_Episodes": n,
            "Return": float(rets.mean()) if n else float("nan"), "Return_Std": float(rets.std()) if n else float("nan"),
            "Horizon": float(lens.mean()) if n else float("nan"),
            **{f"Max_{k.capitalize()}": float(np.mean([e.metrics[k] for e in episodes])) for k in
               (episodes[0].metrics if n else {}) if all(k in e.metrics for e in episodes)}}


def summarize_tasks(episodes: list[Episode]) -> dict:
    """Per task (multi-task evaluation): ``{task: summarize(its episodes)}`` in order of first appearance, plus
    ``Mean_Task_Success_Rate`` (the unweighted mean over tasks, the MT10/MT50 benchmark number); ``{}`` when no
    episode has a task."""
    tasks = list(dict.fromkeys(e.task for e in episodes if e.task is not None))
    if not tasks:
        return {}
    per = {t: summarize([e for e in episodes if e.task == t]) for t in tasks}
    return {"Tasks": per, "Mean_Task_Success_Rate": float(np.mean([m["Success_Rate"] for m in per.values()]))}


def check_policy_fits(policy, obs: dict, action_dimension: int, env_name: str = "") -> None:
    """Clear errors when the policy needs observation keys or shapes the environment does not give, or acts with
    another number of action dimensions."""
    algo = policy.policy
    if getattr(algo, "goal_shapes", None):
        raise RolloutError(f"the policy is goal-conditioned (goal keys {sorted(algo.goal_shapes)}); rollouts with "
                           "goals are not supported yet")
    where = f"environment {env_name!r}" if env_name else "the environment"
    missing = [k for k in algo.obs_shapes if k not in obs]
    if missing:
        raise RolloutError(f"the policy needs observation keys {missing} that {where} does not provide "
                           f"(it provides {sorted(obs)}): the checkpoint was trained with other observation keys "
                           "or on another task")
    for k, shape in algo.obs_shapes.items():
        got = tuple(np.shape(obs[k]))
        if int(np.prod(got)) != int(np.prod(shape)):
            raise RolloutError(f"observation {k!r} has shape {got} in {where}, but the policy was trained on shape "
                               f"{tuple(shape)}: the checkpoint comes from another task or robot")
    out_dim = getattr(policy, "action_dim", None) or algo.ac_dim  # after any rot_6d -> axis-angle conversion
    if int(out_dim) != int(action_dimension):
        converted = "" if int(out_dim) == int(algo.ac_dim) else f" ({algo.ac_dim} before converting rot_6d actions)"
        raise RolloutError(f"action dim {out_dim} in the checkpoint{converted}, {action_dimension} in {where}: the "
                           "policy was trained for another robot or controller")


class _Slot:
    """What one environment slot is doing: which episode, and what has been recorded so far."""

    def __init__(self, index: int, seed, t0: float):
        self.index, self.seed, self.t0 = index, seed, t0
        self.length, self.ret, self.success, self.done = 0, 0.0, False, False
        self.obs, self.actions, self.rewards, self.dones, self.states = [], [], [], [], []
        self.model = self.ep_meta = None
        self.frames = []
        self.metrics = {}


def _trajectory(s: _Slot) -> dict:
    keys = list(s.obs[0])
    obs = {k: np.stack([o[k] for o in s.obs[:-1]]) for k in keys}
    next_obs = {k: np.stack([o[k] for o in s.obs[1:]]) for k in keys}
    traj = {"obs": obs, "next_obs": next_obs, "actions": np.asarray(s.actions, dtype=np.float64),
            "rewards": np.asarray(s.rewards, dtype=np.float64), "dones": np.asarray(s.dones, dtype=np.int64)}
    if s.states:
        traj["states"] = np.stack(s.states[:-1])
    attrs = {}
    if s.model is not None:
        attrs["model_file"] = s.model
    if s.ep_meta is not None:
        attrs["ep_meta"] = s.ep_meta
    if attrs:
        traj["attrs"] = attrs
    return traj


def run_episodes(policy, envs, n: int, horizon: int, seed: int | None = 0, terminate_on_success: bool = True,
                 record: bool = False, initial_states: list | None = None, video=None, video_skip: int = 5,
                 video_size: tuple = (512, 512), camera_name: str | None = None, video_episodes: int | None = None,
                 on_episode=None, indices: list | None = None, task: str | None = None) -> list[Episode]:
    """Play ``n`` episodes with ``policy`` (a :class:`modmimic.policy.RolloutPolicy`) in ``envs`` (a
    :class:`~modmimic.envs.vector.LocalEnvs` or :class:`~modmimic.envs.vector.WorkerEnvs`).

    ``indices``: play only these episodes of the ``n`` (distributed evaluation: rank ``r`` of ``N`` plays
    ``r, r + N, ...``); episode ``i`` starts from ``seed + i`` (or ``initial_states[i]``) as always, so the union of
    the ranks' episodes is the serial evaluation's.

    ``video``: a :class:`~modmimic.envs.video.VideoWriter`; frames every ``video_skip`` steps of the first
    ``video_episodes`` episodes (all when None), appended episode by episode. ``on_episode(episode)`` is called as
    each episode ends (progress output). Returns the episodes in index order.

    A multi-task policy (``policy.multi_task``) gets each environment's task with its observations: ``task`` (a
    name or an instruction) for every episode, else the task the environment reports at reset (a Meta-World task
    set plays task ``seed mod T``); each :class:`Episode` records it (any policy's episodes record the task the
    environment reports, so a task set's success is reported per task either way).
    """
    if n < 1:
        raise ValueError(f"number of episodes must be >= 1, got {n}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if initial_states is not None and len(initial_states) < n:
        raise ValueError(f"{n} episodes but only {len(initial_states)} initial states")
    order = list(range(n)) if indices is None else [int(i) for i in indices]
    if any(not 0 <= i < n for i in order):
        raise ValueError(f"episode indices {order} must lie in [0, {n})")
    if not order:
        return []
    n = len(order)
    K = len(envs)
    obs_keys = list(policy.policy.obs_shapes)
    slots: list[_Slot | None] = [None] * K
    last_obs: list[dict | None] = [None] * K
    results: list[Episode] = []
    next_index = 0
    want_state = bool(record)
    multi_task = bool(getattr(policy, "multi_task", False))
    tasks: list[str | None] = [task] * K

    def wants_video(index: int) -> bool:
        return video is not None and (video_episodes is None or index < video_episodes)

    def opts(index: int, step: int) -> dict:
        o = {"state": want_state}
        if wants_video(index) and step % max(1, video_skip) == 0:
            o["frame"] = (int(video_size[0]), int(video_size[1]), camera_name)
        return o

    def send_start(j: int) -> None:
        nonlocal next_index
        i = order[next_index]
        next_index += 1
        ep_seed = None if seed is None or initial_states is not None else int(seed) + i
        slots[j] = _Slot(i, ep_seed, time.perf_counter())
        o = {**opts(i, 0), "model": bool(record)}
        if initial_states is not None:
            envs.send(j, ("reset_to", initial_states[i], o))
        else:
            envs.send(j, ("reset", ep_seed, o))

    def begin(j: int, ans: dict) -> None:
        s = slots[j]
        tasks[j] = task if task is not None else ans.get("task")
        if multi_task:
            if tasks[j] is None:
                raise RolloutError("the policy is multi-task and the environment does not say which task it plays: "
                                   f"give the task (one of {', '.join(policy.task_vocab.names)}) with task=")
        s.obs.append(ans["obs"] if record else None)
        last_obs[j] = ans["obs"]
        if record:
            s.states.append(np.asarray(ans["state"], dtype=np.float64))
            s.model, s.ep_meta = ans.get("model"), ans.get("ep_meta")
        if "frame" in ans:
            s.frames.append(ans["frame"])

    def finish(j: int) -> None:
        s = slots[j]
        ep = Episode(index=s.index, seed=s.seed, success=bool(s.success), ret=float(s.ret), length=s.length, slot=j,
                     wall=time.perf_counter() - s.t0, trajectory=_trajectory(s) if record else None,
                     task=tasks[j], metrics=dict(s.metrics))
        if video is not None:
            for f in s.frames:
                video.append(f)
        results.append(ep)
        if on_episode is not None:
            on_episode(ep)
        slots[j] = None

    # first episodes, then check that policy and environment fit
    first = list(range(min(K, n)))
    for j in first:
        send_start(j)
    for j in first:
        begin(j, envs.recv(j))
    envs.send(0, ("info", None, None))
    info = envs.recv(0)
    check_policy_fits(policy, last_obs[0], info["action_dimension"], info["name"])
    policy.start_episode(K)
    for j in range(len(first), K):  # slots without an episode act on a copy of slot 0's observation
        last_obs[j] = last_obs[0]
        tasks[j] = tasks[0]

    while any(s is not None for s in slots):
        active = [j for j in range(K) if slots[j] is not None]
        batch = {k: np.stack([np.asarray(last_obs[j][k]) for j in range(K)]) for k in obs_keys}
        actions = np.asarray(policy(batch, batched_ob=True, tasks=list(tasks)) if multi_task else
                             policy(batch, batched_ob=True))
        for j in active:
            envs.send(j, ("step", actions[j], opts(slots[j].index, slots[j].length + 1)))
        ended = []
        for j in active:
            ans, s = envs.recv(j), slots[j]
            s.length += 1
            s.ret += ans["reward"]
            ok = bool(ans["success"]["task"])
            track_metrics(s.metrics, ans["success"])
            s.success = s.success or ok
            stop = bool(ans["done"]) or (terminate_on_success and ok) or s.length >= horizon
            if record:
                s.actions.append(np.asarray(actions[j], dtype=np.float64))
                s.rewards.append(ans["reward"])
                s.dones.append(int(bool(ans["done"]) or (terminate_on_success and ok)))
                s.obs.append(ans["obs"])
                s.states.append(np.asarray(ans["state"], dtype=np.float64))
            if "frame" in ans:
                s.frames.append(ans["frame"])
            last_obs[j] = ans["obs"]
            if stop:
                ended.append(j)
        restarted = []
        for j in ended:
            finish(j)
            if next_index < n:
                send_start(j)
                restarted.append(j)
        for j in restarted:
            begin(j, envs.recv(j))
        if restarted:
            mask = np.zeros(K, dtype=bool)
            mask[restarted] = True
            policy.reset_envs(mask)
    envs.send(0, ("info", None, None))  # the success signal is known once the environment has stepped
    warn_no_success_signal(envs.recv(0))
    return sorted(results, key=lambda e: e.index)


def policy_obs_keys(policy) -> list:
    """Observation (and goal) keys a :class:`modmimic.policy.RolloutPolicy` reads."""
    algo = getattr(policy, "policy", None)
    return list(getattr(algo, "obs_shapes", None) or {}) + list(getattr(algo, "goal_shapes", None) or {})


def camera_obs_flags(obs_keys) -> dict:
    """Environment flags for a policy reading ``obs_keys``: camera observations (from the cameras and sizes in the
    dataset's ``env_args``) when it reads ``<camera>_image`` / ``<camera>_depth`` keys."""
    from modmimic.envs import camera_obs_flags as flags

    return flags(obs_keys)


def rollout(policy, env_meta: dict, n: int, horizon: int, seed: int | None = 0, num_envs: int = 1,
            terminate_on_success: bool = True, record: bool = False, video_path: str | None = None,
            video_skip: int = 5, video_size: tuple = (512, 512), camera_name: str | None = None,
            video_episodes: int | None = None, initial_states: list | None = None, on_episode=None,
            timeout: float = 120.0, env_name: str | None = None, indices: list | None = None,
            task: str | None = None) -> list[Episode]:
    """:func:`run_episodes` in freshly made environments (closed afterwards): ``num_envs == 1`` in this process,
    more in worker processes. ``indices``: play only these of the ``n`` episodes (see :func:`run_episodes`)."""
    if indices is not None and not list(indices):
        return []
    from modmimic.envs.video import VideoWriter

    make_kwargs = {"render": video_path is not None, **camera_obs_flags(policy_obs_keys(policy))}
    if env_name is not None:
        make_kwargs["env_name"] = env_name
    video = None
    envs = make_envs(env_meta, num_envs, timeout=timeout, **make_kwargs)
    try:
        if video_path is not None:
            video = VideoWriter(video_path)
        return run_episodes(policy, envs, n, horizon, seed=seed, terminate_on_success=terminate_on_success,
                            record=record, initial_states=initial_states, video=video, video_skip=video_skip,
                            video_size=video_size, camera_name=camera_name, video_episodes=video_episodes,
                            on_episode=on_episode, indices=indices, task=task)
    finally:
        if video is not None:
            video.close()
        envs.close()


# --- datasets of rollouts -----------------------------------------------------------------------------------

class DatasetWriter:
    """Writes episodes to a robomimic HDF5 file as they come (``data/demo_<i>``, ``num_samples``, ``model_file``,
    ``ep_meta``, ``states``, ``actions``, ``rewards``, ``dones``, ``obs/``, ``next_obs/``; ``data.attrs`` ``total``
    and ``env_args``; ``mask/<name>`` filter keys at :meth:`close`).

    ``obs_dtype`` (e.g. ``np.float32``) converts float observations; ``obs_keys`` limits the stored keys;
    ``compression`` ("gzip") compresses every dataset with byte shuffling (read transparently by h5py) and writes
    HDF5 1.10's compact chunk indexes (files need HDF5 >= 1.10 / h5py >= 2.8 to read; small per-demo datasets
    otherwise cost more in index overhead than their data).

    ``model_file``: where each demo's MJCF XML goes. ``"attr"`` (robomimic's layout): the string attribute
    ``model_file``; ``"gzip"``: a gzip-compressed ``uint8`` dataset ``data/demo_<i>/model_file`` holding the UTF-8
    XML (~40 KB per Lift demo as an attribute, which HDF5 cannot compress, ~5 KB this way). Read either with
    :func:`modmimic.data.hdf5.read_model_file`."""

    MODEL_FILE_MODES = ("attr", "gzip")

    def __init__(self, path: str, env_meta: dict, obs_keys: list | None = None, obs_dtype=None,
                 compression: str | None = None, next_obs: bool = True, model_file: str = "attr"):
        import h5py

        if model_file not in self.MODEL_FILE_MODES:
            raise ValueError(f"model_file must be one of {self.MODEL_FILE_MODES}, got {model_file!r}")
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self.path, self.env_meta = path, env_meta
        self.obs_keys, self.obs_dtype, self.compression, self.next_obs = obs_keys, obs_dtype, compression, next_obs
        self.model_file = model_file
        self._tmp = path + ".partial"
        self.f = h5py.File(self._tmp, "w", **({"libver": ("v110", "latest")} if compression else {}))
        self.data = self.f.create_group("data")
        self.names: list[str] = []
        self.total = 0

    def _ds(self, group, name, value):
        value = np.asarray(value)
        kw = {}
        if self.compression and value.ndim >= 1 and value.size > 16:
            kw = {"compression": self.compression, "shuffle": value.dtype.itemsize > 1}
        group.create_dataset(name, data=value, **kw)

    def add(self, traj: dict) -> str:
        name = f"demo_{len(self.names)}"
        g = self.data.create_group(name)
        T = len(traj["actions"])
        g.attrs["num_samples"] = T
        for k, v in (traj.get("attrs") or {}).items():
            if k == "model_file" and self.model_file == "gzip":
                xml = np.frombuffer(str(v).encode("utf-8"), dtype=np.uint8)
                g.create_dataset("model_file", data=xml, compression="gzip", compression_opts=9)
            else:
                g.attrs[k] = v
        for group in ("obs", "next_obs") if self.next_obs else ("obs",):
            for k, v in traj[group].items():
                if self.obs_keys is not None and k not in self.obs_keys:
                    continue
                v = np.asarray(v)
                if self.obs_dtype is not None and np.issubdtype(v.dtype, np.floating):
                    v = v.astype(self.obs_dtype)
                self._ds(g, f"{group}/{k}", v)
        for k in ("actions", "rewards", "dones", "states"):
            if k in traj:
                self._ds(g, k, traj[k])
        self.names.append(name)
        self.total += T
        return name

    def close(self, masks: dict | None = None) -> str:
        """Finish the file (``masks``: ``{filter key: [demo names]}``) and move it into place."""
        self.data.attrs["total"] = self.total
        self.data.attrs["env_args"] = json.dumps(self.env_meta)
        for name, demos in (masks or {}).items():
            self.f.create_dataset(f"mask/{name}", data=np.array(demos, dtype="S"))
        self.f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


def split_masks(names: list[str], valid_fraction: float = 0.1, seed: int = 0) -> dict:
    """Seeded ``train``/``valid`` filter keys (robomimic's split script shuffles without a seed)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(names))
    n_valid = int(round(valid_fraction * len(names))) if valid_fraction > 0 else 0
    if valid_fraction > 0 and len(names) > 1:
        n_valid = max(1, n_valid)
    valid = sorted(perm[:n_valid])
    train = sorted(perm[n_valid:])
    return {"train": [names[i] for i in train], "valid": [names[i] for i in valid]}


def write_episodes(path: str, episodes: list[Episode], env_meta: dict, **writer_kwargs) -> str:
    """Recorded episodes (``run_episodes(..., record=True)``) -> a robomimic HDF5 file."""
    w = DatasetWriter(path, env_meta, **writer_kwargs)
    try:
        for e in episodes:
            if e.trajectory is None:
                raise ValueError("episodes were not recorded (run_episodes(..., record=True))")
            w.add(e.trajectory)
        return w.close()
    except BaseException:
        w.abort()
        raise


# --- the trainer's rollout hook -------------------------------------------------------------------------------

TRAIN_ROLLOUT_SEED = 200_000  # + train.seed: initial states no demo generator (seeds 0, 1, ...) has used


class RolloutProgress:
    """``on_episode`` callback that shows rollout progress: episodes done, successes so far, episodes per second.

    ``bar``: a tqdm bar on stderr (None: when stderr is a terminal); otherwise a line on stdout at most every
    ``every_s`` seconds. :meth:`close` prints the final line (always, unless ``enabled`` is False)."""

    def __init__(self, total: int, desc: str = "rollout", bar=None, every_s: float = 10.0, enabled: bool = True):
        import sys

        self.total, self.desc, self.every_s, self.enabled = int(total), desc, every_s, enabled
        self.done = self.successes = 0
        self.t0 = self._last = time.perf_counter()
        self.bar = None
        if enabled and (bar or (bar is None and sys.stderr.isatty())):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit="ep", leave=False, file=sys.stderr, dynamic_ncols=True)

    def line(self) -> str:
        dt = time.perf_counter() - self.t0
        rate = self.done / dt if dt > 0 else float("nan")
        return (f"  {self.desc}: {self.done}/{self.total} episodes, {self.successes} successes, "
                f"{rate:.2f} episodes/s, {dt:.1f}s")

    def __call__(self, ep: Episode) -> None:
        self.done += 1
        self.successes += int(bool(ep.success))
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(successes=self.successes, refresh=False)
        elif time.perf_counter() - self._last >= self.every_s and self.done < self.total:
            self._last = time.perf_counter()
            print(self.line(), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            print(self.line(), flush=True)


class TrainingRollouts:
    """Rollout hook of :func:`modmimic.trainer.train`: ``experiment.rollout.n`` episodes of at most
    ``experiment.rollout.horizon`` steps in the dataset's environment (made once by :meth:`prepare`, reused every
    epoch), the same initial states every time (comparable across epochs), torch's RNG forked so rollouts do not
    change training. With ``experiment.render_video`` an MP4 per rollout epoch goes to
    ``<run dir>/videos/<env>_epoch_<e>.mp4`` (:attr:`videos` maps env name to the latest). Progress (episodes,
    successes, episodes/s) is shown while it runs (``progress``: None = a bar when stderr is a terminal, else lines;
    False = nothing). Returns ``{env name: {"Success_Rate", "Return", "Horizon", ..., "Time_Episode"}}``.

    ``group`` (a :class:`modmimic.distributed.Group`, data-parallel training): episode ``i`` is played on rank
    ``i mod N``, the episodes are gathered, and every rank returns the summary of all of them (rank 0 renders the
    video of its episodes)."""

    def __init__(self, num_envs: int = 1, progress=None, group=None):
        self.num_envs = num_envs
        self.progress = progress
        self.group = group
        self.envs = None
        self.env_name = None
        self.videos: dict = {}

    def prepare(self, cfg, env_meta: dict) -> str:
        """Make the environment now (start-up: a missing simulator or an unusable environment shows before training);
        returns its name. Raises ImportError (simulator missing) or :class:`modmimic.data.hdf5.DatasetError`."""
        if self.envs is None:
            self._make(cfg, env_meta)
        return self.env_name

    def _make(self, cfg, env_meta: dict):
        from omegaconf import OmegaConf

        from modmimic.envs import update_env_meta

        meta = update_env_meta(env_meta, OmegaConf.to_container(cfg.experiment.env_meta_update_dict, resolve=True))
        from modmimic.config import all_obs_keys

        env_name = cfg.experiment.env
        if env_name and not meta.get("env_name"):  # data that names no simulator (a LeRobot folder): a gymnasium id
            meta = {**meta, "env_name": str(env_name), "type": meta.get("type", GYM_TYPE),
                    "env_kwargs": meta.get("env_kwargs", {})}  # or Meta-World task from experiment.env
        try:
            self.envs = make_envs(meta, self.num_envs, render=bool(cfg.experiment.render_video),
                                  **camera_obs_flags(all_obs_keys(cfg)), **({"env_name": env_name} if env_name else {}))
        except ImportError:  # a simulator is missing: the trainer warns and goes on without rollouts
            raise
        except EnvError as e:  # the dataset's env metadata is unusable: bad input
            from modmimic.data.hdf5 import DatasetError

            raise DatasetError(f"{cfg.train.data}: cannot build the dataset's environment for rollouts: {e} (set "
                               "experiment.rollout.enabled=false to train without rollouts)") from None
        self.envs.send(0, ("info", None, None))
        self.env_name = self.envs.recv(0)["name"]

    def __call__(self, policy, epoch: int, cfg, env_meta: dict, run_dir: str | None = None) -> dict:
        import torch

        from modmimic.envs.video import VideoWriter

        if self.envs is None:
            self._make(cfg, env_meta)
        r = cfg.experiment.rollout
        from modmimic import distributed

        group = self.group or distributed.SINGLE
        video = None
        if cfg.experiment.render_video and run_dir is not None and group.is_main:
            video = VideoWriter(os.path.join(run_dir, "videos", f"{self.env_name}_epoch_{epoch}.mp4"))
        share = distributed.episode_share(int(r.n), group)
        progress = RolloutProgress(len(share), desc=f"epoch {epoch}/{cfg.train.num_epochs} rollout {self.env_name}",
                                   bar=self.progress, enabled=self.progress is not False and group.is_main)
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a batch of a few observations: one thread is fastest
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(cfg.train.seed))
                eps = run_episodes(policy, self.envs, int(r.n), int(r.horizon),
                                   seed=TRAIN_ROLLOUT_SEED + int(cfg.train.seed),
                                   terminate_on_success=bool(r.terminate_on_success), video=video,
                                   video_skip=int(cfg.experiment.video_skip), on_episode=progress,
                                   indices=share if group.active else None)
        finally:
            torch.set_num_threads(threads)
            progress.close()
            if video is not None:
                video.close()
        if video is not None and video.frames:
            self.videos[self.env_name] = video.path
        eps = distributed.gather_episodes(eps, group)
        m = summarize(eps)
        by_task = summarize_tasks(eps)
        if by_task:  # multi-task: each task's success rate as its own scalar (Rollout/Success_Rate_<task>/<env>)
            m["Mean_Task_Success_Rate"] = by_task["Mean_Task_Success_Rate"]
            m.update({f"Success_Rate_{t}": v["Success_Rate"] for t, v in by_task["Tasks"].items()})
        m["Time_Episode"] = (time.perf_counter() - t0) / 60 / max(1, len(eps))
        return {self.env_name: m}

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None


__all__ = ["Episode", "RolloutError", "run_episodes", "rollout", "summarize", "summarize_tasks", "wilson_interval",
           "DatasetWriter", "write_episodes", "split_masks", "TrainingRollouts", "RolloutProgress", "LocalEnvs",
           "EnvError"]
