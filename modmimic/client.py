"""The robot side of ``python -m modmimic.serve``: :class:`RemotePolicy`, with the call API of
:class:`modmimic.policy.RolloutPolicy` (``start_episode``, ``reset_envs``, ``__call__(obs)``), over websockets +
msgpack (:mod:`modmimic.wire`).

Needs only numpy, msgpack and websockets (``pip install 'modmimic[client]'``): importing this module imports no torch
and nothing else of modmimic but :mod:`modmimic.wire`, so it runs on a small robot computer.

    from modmimic.client import RemotePolicy
    policy = RemotePolicy("gpu-box:8765", token=open("token.txt").read().strip())
    policy.start_episode()
    action = policy({"pos": pos, "goal_pos": goal, "vel": vel})   # numpy in, numpy out
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from modmimic.wire import PROTOCOL, pack, unpack


class RemoteError(RuntimeError):
    """The server refused a request (the message is the server's), or the connection failed."""


def normalize_url(url: str) -> str:
    """``host:port`` or ``ws://host:port`` (``wss://`` for TLS) as a websocket URL."""
    url = str(url).strip()
    if "://" not in url:
        url = "ws://" + url
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"server URL {url!r}: expected host:port, ws://host:port or wss://host:port")
    return url


class RemotePolicy:
    """A policy served by ``python -m modmimic.serve`` (one session per instance: its own episode state on the
    server). ``token``: the server's shared secret (sent as ``Authorization: Bearer``). ``timeout``: seconds to
    wait for a connection and for each reply.

    ``policy.obs_shapes`` / ``goal_shapes`` / ``ac_dim`` / ``recipe_name`` mirror the in-process ``RolloutPolicy``'s
    ``policy`` attribute so that :func:`modmimic.rollout.rollout` drives either; ``metadata`` is the server's full
    description (observation dtypes, chunk size, control rate, checkpoint sha256, ...)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, seed: int | None = None):
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        self.url = normalize_url(url)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            self._ws = connect(self.url, additional_headers=headers, open_timeout=timeout, compression=None,
                               max_size=None).__enter__()  # held open until close() (websockets >= 17 asks)
        except InvalidStatus as e:
            code = e.response.status_code
            raise RemoteError(f"{self.url} refused the connection (HTTP {code}"
                              + (": missing or wrong token" if code == 401 else "") + ")") from None
        except OSError as e:
            raise RemoteError(f"cannot connect to {self.url}: {e}") from None
        self.timeout = timeout
        self.metadata = self._request({"op": "metadata"})["metadata"]
        if self.metadata.get("protocol") != PROTOCOL:
            raise RemoteError(f"{self.url} speaks protocol {self.metadata.get('protocol')}, this client {PROTOCOL}")
        m = self.metadata
        self.policy = SimpleNamespace(obs_shapes={k: tuple(v) for k, v in m["obs_shapes"].items()},
                                      goal_shapes={k: () for k in m.get("goal_keys", [])}, ac_dim=m["action_dim"],
                                      recipe_name=m["recipe"], device="remote")
        self.num_envs = 1
        self._seed = seed
        self.chunking = m.get("chunking")  # None: acts one step at a time
        # multi-task policies: the task names it was trained on (instructions too for a language policy)
        self.task_vocab = SimpleNamespace(names=list(m.get("tasks") or []), conditioning=m.get("task_conditioning"))

    @property
    def multi_task(self) -> bool:
        return bool(self.task_vocab.names)

    @property
    def action_dim(self) -> int:
        return int(self.metadata["action_dim"])

    def _request(self, message: dict) -> dict:
        try:
            self._ws.send(pack(message))
            reply = unpack(self._ws.recv(timeout=self.timeout))
        except TimeoutError:
            raise RemoteError(f"{self.url} did not answer within {self.timeout} s") from None
        except Exception as e:  # noqa: BLE001 - closed connection, bad frame
            if isinstance(e, RemoteError):
                raise
            raise RemoteError(f"{self.url}: {type(e).__name__}: {e}") from None
        if not reply.get("ok"):
            raise RemoteError(f"{self.url}: {reply.get('error', 'request failed')}")
        return reply

    def seed(self, seed: int | None) -> None:
        """Seed this session's RNG (sampling policies) at the next :meth:`start_episode`: the stream
        ``torch.manual_seed(seed)`` gives an in-process policy."""
        self._seed = seed

    def start_episode(self, num_envs: int = 1, seed: int | None = None) -> None:
        seed, self._seed = (seed if seed is not None else self._seed), None
        self._request({"op": "reset", "num_envs": int(num_envs), "seed": seed})
        self.num_envs = int(num_envs)

    def reset_envs(self, done) -> None:
        self._request({"op": "reset", "num_envs": self.num_envs, "done": np.asarray(done, dtype=bool)})

    def __call__(self, ob: dict, goal: dict | None = None, batched_ob: bool = False, tasks=None) -> np.ndarray:
        """``tasks``: a multi-task policy's task (name or instruction), one or one per environment; kept by the
        server for the next calls."""
        if goal is not None and self.policy.goal_shapes:
            raise RemoteError("goal-conditioned policies are not served yet")
        obs = {k: np.asarray(ob[k]) for k in self.policy.obs_shapes if k in ob}
        msg = {"op": "act", "obs": obs, "batched": bool(batched_ob)}
        if tasks is not None:
            msg["tasks"] = tasks if isinstance(tasks, str) else [str(t) for t in tasks]
        return self._request(msg)["action"]

    def predict_chunk(self, window: dict, batched_ob: bool = False, prefix=None) -> np.ndarray:
        """The served policy's whole chunk for an observation window (key -> ``[obs_horizon, *shape]``, or
        ``[n, obs_horizon, *shape]`` with ``batched_ob``), ``[H, A]`` (``[n, H, A]``), without touching the
        session's episode state: what :class:`modmimic.chunking.ChunkExecutor` asks for while the robot keeps
        acting (``executor_for(remote)``). ``prefix``: actions already decided for the first steps, inpainted by
        sampling policies."""
        if self.chunking is None:
            raise RemoteError(f"{self.url}: recipe {self.metadata['recipe']!r} acts one step at a time (no chunks)")
        obs = {k: np.asarray(window[k]) for k in self.policy.obs_shapes if k in window}
        msg = {"op": "chunk", "obs": obs, "batched": bool(batched_ob)}
        if prefix is not None:
            msg["prefix"] = np.asarray(prefix, dtype=np.float32)
        return self._request(msg)["chunk"]

    def close(self) -> None:
        self._ws.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"RemotePolicy({self.url}, {self.metadata['recipe']})"
