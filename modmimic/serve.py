"""``python -m modmimic.serve checkpoint=<ckpt> [host=127.0.0.1 port=8765 device=cpu token_file=...]`` — serve a
policy to robots over websockets + msgpack (:mod:`modmimic.wire`).

Why websockets + msgpack rather than gRPC: a policy call is one request and one reply of a few numpy arrays, which a
persistent websocket carries with one small frame each way; the robot side needs only numpy, msgpack and websockets
(pure-Python wheels of a few hundred kB, no code generation, no protobuf schema to keep in step with the
checkpoint's observation keys), and any language with a msgpack library can be a client. OpenPI serves its
policies the same way.

Sessions: every connection is one session with its own copy of the acting path (:meth:`RolloutPolicy.fork`: RNN
hidden state, observation history, action queues) and its own RNG stream (seeded by ``reset``'s ``seed``), so
sessions never see each other's state and a session's actions equal the in-process policy's bit for bit. The
networks are loaded once and shared; one worker thread runs every inference, so calls are serialized and the RNG
streams stay exact. A session ends, and its state is freed, when its connection closes (also mid-episode).

Security: the checkpoint is loaded under the checkpoint trust rules (weights only; callables from modmimic or
``MODMIMIC_TRUSTED_MODULES``). Nothing a client sends is imported or executed: messages are msgpack maps of plain
values and numeric arrays (:mod:`modmimic.wire`), checked against the policy's observation keys, shapes and dtypes
and for NaN/Inf before they reach the policy; any bad message gets ``{"ok": false, "error": ...}`` and the session
continues. A frame larger than ``max_message_mb`` closes that connection (websocket close code 1009). Binding to
an address other than loopback requires a token (``token_file=`` or the ``MODMIMIC_SERVE_TOKEN`` environment
variable); clients send it as ``Authorization: Bearer <token>`` and are refused (HTTP 401) without it. A token, when
given, is required on loopback too.

Exit status: 0 stopped (Ctrl-C), 2 bad input (arguments, checkpoint, no token for a public address), 1 failure.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modmimic.cli import ArgumentError, parse_kv, report as cli_report, run_main, usage_text
from modmimic.wire import PROTOCOL, WireError, pack, unpack

PROG = "modmimic.serve"
EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
TOKEN_ENV = "MODMIMIC_SERVE_TOKEN"
MAX_ENVS = 1024

ARGS = {
    "checkpoint": (str, None, "the checkpoint (.pth) to serve (required)"),
    "host": (str, "127.0.0.1", "address to bind (anything but loopback needs a token)"),
    "port": (int, 8765, "TCP port (0: any free port)"),
    "device": (str, "cpu", "where the policy runs (cpu, cuda)"),
    "token_file": (str, None, f"file holding the shared secret clients must send (or ${TOKEN_ENV})"),
    "max_message_mb": (float, 64.0, "largest request frame accepted, MiB"),
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str | None:
    """The shared secret from ``token_file`` (stripped) or ``$MODMIMIC_SERVE_TOKEN``; None when neither is set."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                tok = f.read().strip()
        except OSError as e:
            raise ArgumentError(f"token_file={token_file}: cannot read it ({e.strerror})") from None
        if not tok:
            raise ArgumentError(f"token_file={token_file} is empty")
        return tok
    tok = os.environ.get(TOKEN_ENV, "").strip()
    return tok or None


def metadata(policy, ckpt: dict, sha256: str) -> dict:
    """What a client needs to drive the policy."""
    from modmimic.export import control_rate, input_dtype, plain_config
    from modmimic.components.nets.core import encoder_spec

    algo = policy.policy
    spec = (encoder_spec(plain_config(algo.config.observation)) if "observation" in algo.config else None) or {}
    mods = spec.get("modalities") or {}
    path = policy.acting_path
    chunked = hasattr(path, "Ta")
    return {
        "protocol": PROTOCOL, "recipe": algo.recipe_name, "algo_name": algo.algo_name,
        "checkpoint_sha256": sha256,
        "obs_keys": sorted(algo.obs_shapes),
        "obs_shapes": {k: list(v) for k, v in sorted(algo.obs_shapes.items())},
        "obs_dtypes": {k: input_dtype(mods.get(k, "low_dim")) for k in sorted(algo.obs_shapes)},
        "goal_keys": sorted(algo.goal_shapes),
        "action_dim": int(policy.action_dim or algo.ac_dim), "action_keys": policy.action_keys,
        "chunk_size": int(path.Ta) if chunked else 1,
        "obs_horizon": int(getattr(path, "To", 1)),
        "temporal_ensemble": bool(getattr(path, "temporal_ensemble", False)),
        "chunking": policy.chunking,  # None: acts one step at a time (no "chunk" requests)
        "acting": type(path).__name__,
        "control_rate_hz": control_rate(ckpt),
        "max_envs": MAX_ENVS,
        # multi-task policies: act with tasks=<name or instruction> (one, or one per environment)
        "tasks": list(policy.task_vocab.names) if getattr(policy, "multi_task", False) else [],
        "task_conditioning": policy.task_vocab.conditioning if getattr(policy, "multi_task", False) else None,
    }


class Session:
    """One client's episode state: its acting path (through a forked policy) and its RNG stream (the CPU
    generator's state, and the GPU's when the policy runs on one), swapped in around each call."""

    def __init__(self, policy):
        import torch

        self.policy = policy.fork()
        self.device = policy.policy.device
        self.num_envs = 0  # no episode yet
        self.rng, self.gpu_rng = torch.get_rng_state(), None

    def reset(self, num_envs: int, seed=None, done=None) -> None:
        import torch

        if seed is not None:  # the stream torch.manual_seed(seed) starts in-process
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(int(seed))
                self.rng = torch.get_rng_state()
                self.gpu_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        if done is None:
            self.policy.start_episode(num_envs)
            self.num_envs = num_envs
        else:
            self.policy.reset_envs(done)

    def act(self, obs: dict, batched: bool) -> np.ndarray:
        return self._with_rng(self.policy, obs, batched_ob=batched)

    def chunk(self, window: dict, batched: bool, prefix=None) -> np.ndarray:
        return self._with_rng(self.policy.predict_chunk, window, batched_ob=batched, prefix=prefix)

    def _with_rng(self, fn, *args, **kwargs) -> np.ndarray:
        """``fn(*args)`` drawing from this session's RNG stream."""
        import torch

        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.set_rng_state(self.rng)
            if cuda and self.gpu_rng is not None:
                torch.cuda.set_rng_state(self.gpu_rng, self.device)
            out = fn(*args, **kwargs)
            self.rng = torch.get_rng_state()
            if cuda:
                self.gpu_rng = torch.cuda.get_rng_state(self.device)
        return np.asarray(out, dtype=np.float32)


class PolicyServer:
    """The server: ``PolicyServer(policy, ckpt, sha256, host, port, token)``; ``start()`` serves from a background
    thread (tests, notebooks), ``serve_forever()`` from the calling one. ``sessions`` counts open sessions."""

    def __init__(self, policy, ckpt: dict, sha256: str, host: str = "127.0.0.1", port: int = 8765,
                 token: str | None = None, max_message_bytes: int = 64 << 20):
        if not is_loopback(host) and not token:
            raise ArgumentError(f"host={host} is not a loopback address: serving there needs a token (token_file= "
                                f"or ${TOKEN_ENV}), so that only clients that know it can drive the robot")
        self.policy, self.host, self.port, self.token = policy, host, int(port), token
        self.max_message_bytes = int(max_message_bytes)
        self.meta = metadata(policy, ckpt, sha256)
        self.shapes = {k: tuple(v) for k, v in self.meta["obs_shapes"].items()}
        self.sessions: dict[int, Session] = {}
        self.errors = 0
        import torch

        # OpenMP's thread count is per thread: the worker starts with the machine's default, not this process's
        # setting, and oversubscribed small matmuls (LSTM, MLP) ran 5-40x slower than in-process before this
        threads = torch.get_num_threads()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="modmimic-policy",
                                          initializer=torch.set_num_threads, initargs=(threads,))
        self._loop = self._server = self._thread = None
        self._ready = threading.Event()
        policy.policy.set_eval()

    # --- protocol ------------------------------------------------------------------------------------------
    def check_obs(self, obs, batched, session: Session, op: str = "act") -> dict:
        """The observation map of an ``act`` request, checked: every key the policy needs, each a finite numeric
        array of the policy's shape (``[num_envs, *shape]`` when batched); other keys are ignored. For ``chunk``,
        the observation window: ``[obs_horizon, *shape]`` (``[n, obs_horizon, *shape]`` batched, any ``n`` up to
        ``max_envs``)."""
        if not isinstance(obs, dict):
            raise WireError(f"{op}: obs must be a map of observation key -> array, got {type(obs).__name__}")
        if not isinstance(batched, bool):
            raise WireError(f"{op}: batched must be true or false, got {type(batched).__name__}")
        missing = [k for k in self.shapes if k not in obs]
        if missing:
            raise WireError(f"{op}: observation has no key(s) {missing} (the policy reads {sorted(self.shapes)}; "
                            f"got {sorted(map(str, obs))[:20]})")
        out, rows = {}, None
        for k, shape in self.shapes.items():
            v = obs[k]
            if not isinstance(v, np.ndarray):
                raise WireError(f"{op}: observation {k!r} must be an array, got {type(v).__name__}")
            if op == "chunk":
                shape = (self.meta["obs_horizon"], *shape)
                if batched:
                    rows = v.shape[0] if rows is None and v.ndim else rows
                    if not v.ndim or not 1 <= v.shape[0] <= MAX_ENVS or v.shape[0] != rows:
                        raise WireError(f"chunk: observation window {k!r} has shape {list(v.shape)}: batched windows "
                                        f"are [n, obs_horizon, *shape] with the same n <= {MAX_ENVS} for every key")
            want = ((rows if op == "chunk" else session.num_envs), *shape) if batched else shape
            if tuple(v.shape) != want:
                raise WireError(f"{op}: observation {k!r} has shape {list(v.shape)}, the policy needs {list(want)}"
                                + (" ([num_envs, *shape] with the num_envs of reset)" if batched and op == "act"
                                   else ""))
            if v.dtype == np.bool_:
                raise WireError(f"{op}: observation {k!r} is bool; send numbers")
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise WireError(f"{op}: observation {k!r} has NaN or Inf values")
            if self.meta["obs_dtypes"][k] == "uint8" and v.dtype != np.uint8:
                v = v.astype(np.float32)  # a float image: the encoder clips it to [0, 1] after / 255
            out[k] = v
        return out

    def check_prefix(self, prefix, batched: bool, rows: int):
        """A ``chunk`` request's decided actions (to inpaint): nil, or a finite float array ``[P, A]``
        (``[n, P, A]`` batched) with ``1 <= P <= 64``."""
        if prefix is None:
            return None
        A = self.meta["action_dim"]
        if not isinstance(prefix, np.ndarray) or prefix.dtype.kind != "f":
            raise WireError("chunk: prefix must be a float array of decided actions")
        want = 3 if batched else 2
        if prefix.ndim != want or prefix.shape[-1] != A or not 1 <= prefix.shape[-2] <= 64 or \
                (batched and prefix.shape[0] != rows):
            raise WireError(f"chunk: prefix has shape {list(prefix.shape)}, expected "
                            f"[{str(rows) + ', ' if batched else ''}P, {A}] with 1 <= P <= 64")
        if not np.isfinite(prefix).all():
            raise WireError("chunk: prefix has NaN or Inf values")
        return prefix

    def set_tasks(self, session: Session, tasks) -> None:
        """``act``'s optional ``tasks`` (multi-task policies): a name or instruction, or one per environment."""
        if tasks is None:
            return
        if not self.meta["tasks"]:
            raise WireError("act: tasks= is for multi-task policies; this one takes no task")
        ok = isinstance(tasks, str) or (isinstance(tasks, list) and len(tasks) == session.num_envs
                                        and all(isinstance(t, str) for t in tasks))
        if not ok or any(len(t) > 1000 for t in ([tasks] if isinstance(tasks, str) else tasks)):
            raise WireError(f"act: tasks must be a string or a list of {session.num_envs} strings (one per "
                            "environment, each at most 1000 characters)")
        try:
            session.policy.set_tasks(tasks)
        except ValueError as e:  # an unknown task (ConfigError)
            raise WireError(f"act: {e}") from None

    def handle(self, session: Session, msg: dict) -> dict:
        """One request (already unpacked) -> its reply. Runs on the worker thread."""
        op = msg.get("op")
        if op == "metadata":
            return {"ok": True, "metadata": self.meta}
        if op == "reset":
            n = msg.get("num_envs", 1)
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_ENVS:
                raise WireError(f"reset: num_envs must be an int in [1, {MAX_ENVS}], got {str(n)[:40]}")
            seed = msg.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63):
                raise WireError(f"reset: seed must be a non-negative int or nil, got {str(seed)[:40]}")
            done = msg.get("done")
            if done is not None:
                if session.num_envs == 0:
                    raise WireError("reset: done= resets some environments of an episode; start one first (reset "
                                    "without done)")
                if not isinstance(done, np.ndarray) or done.dtype != np.bool_ or done.shape != (session.num_envs,):
                    raise WireError(f"reset: done must be a bool array of shape [{session.num_envs}]")
            session.reset(n, seed, done)
            return {"ok": True}
        if op == "act":
            if session.num_envs == 0:
                session.reset(1)
            obs = self.check_obs(msg.get("obs"), msg.get("batched", False), session)
            self.set_tasks(session, msg.get("tasks"))
            return {"ok": True, "action": session.act(obs, msg.get("batched", False))}
        if op == "chunk":
            if self.meta["chunking"] is None:
                raise WireError(f"chunk: recipe {self.meta['recipe']!r} acts one step at a time; use act")
            batched = msg.get("batched", False)
            obs = self.check_obs(msg.get("obs"), batched, session, op="chunk")
            prefix = self.check_prefix(msg.get("prefix"), batched, next(iter(obs.values())).shape[0] if batched else 1)
            return {"ok": True, "chunk": session.chunk(obs, batched, prefix)}
        raise WireError(f"unknown op {str(op)[:40]!r}: expected metadata, reset, act or chunk")

    def _answer(self, session: Session, data) -> bytes:
        try:
            return pack(self.handle(session, unpack(data, self.max_message_bytes)))
        except WireError as e:
            self.errors += 1
            return pack({"ok": False, "error": str(e)})
        except Exception as e:  # noqa: BLE001 - the policy failed on this input: say so, keep serving
            self.errors += 1
            return pack({"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"})

    # --- transport ---------------------------------------------------------------------------------------------
    def _authorize(self, connection, request):
        if self.token is None:
            return None
        got = request.headers.get("Authorization", "")
        want = f"Bearer {self.token}"
        if not hmac.compare_digest(got.encode("utf-8", "replace"), want.encode("utf-8")):
            from http import HTTPStatus

            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def _session(self, ws):
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self._worker, Session, self.policy)
        sid = id(session)
        self.sessions[sid] = session
        try:
            async for data in ws:
                reply = await loop.run_in_executor(self._worker, self._answer, session, data)
                await ws.send(reply)
        except Exception:  # noqa: BLE001 - a broken connection ends its session only
            pass
        finally:
            self.sessions.pop(sid, None)
            del session

    async def _main(self, started: asyncio.Future | None = None):
        from websockets.asyncio.server import serve

        async with serve(self._session, self.host, self.port, process_request=self._authorize,
                         max_size=self.max_message_bytes, compression=None, ping_interval=20,
                         ping_timeout=60) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            self._stop = asyncio.get_running_loop().create_future()
            self._ready.set()
            await self._stop

    def serve_forever(self) -> None:
        asyncio.run(self._main())

    def start(self) -> "PolicyServer":
        """Serve from a daemon thread; returns once the port is bound (``self.port`` is the real port)."""
        def run():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._main())

        self._thread = threading.Thread(target=run, name="modmimic-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the policy server did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and not self._stop.done():
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        if self._thread is not None:
            self._thread.join(10)
        self._worker.shutdown(wait=True)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"


def server_from_checkpoint(checkpoint: str, host: str = "127.0.0.1", port: int = 8765, device: str = "cpu",
                           token: str | None = None, max_message_bytes: int = 64 << 20,
                           trusted_modules=None) -> PolicyServer:
    from modmimic.export import sha256_file
    from modmimic.policy import policy_from_checkpoint

    if not is_loopback(host) and not token:  # refuse before loading anything
        raise ArgumentError(f"host={host} is not a loopback address: serving there needs a token (token_file= or "
                            f"${TOKEN_ENV})")
    policy, ckpt = policy_from_checkpoint(device=device, ckpt_path=checkpoint, trusted_modules=trusted_modules)
    return PolicyServer(policy, ckpt, sha256_file(checkpoint), host, port, token, max_message_bytes)


def usage() -> str:
    return usage_text(PROG, "checkpoint=<path.pth> [host=127.0.0.1] [port=8765] [key=value ...]",
                      "Serve a trained policy over websockets + msgpack (modmimic.client.RemotePolicy is the client).",
                      ARGS, "0 stopped, 1 failure, 2 bad input, 130 interrupted.")


def report(e: BaseException) -> int:
    from modmimic.config import ConfigError
    from modmimic.policy import CheckpointError

    return cli_report(e, PROG, [(CheckpointError, "checkpoint error"), (ConfigError, "bad input"),
                                (OSError, "cannot serve")], failure="server failed", interrupted=("stopped.", 0))


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, usage, run, report)


def run(argv: list[str]) -> int:
    a = parse_kv(argv, ARGS, PROG)
    if not a["checkpoint"]:
        raise ArgumentError("checkpoint=<path.pth> is required")
    if a["max_message_mb"] is None or a["max_message_mb"] <= 0:
        raise ArgumentError(f"max_message_mb must be positive, got {a['max_message_mb']}")
    server = server_from_checkpoint(a["checkpoint"], a["host"], a["port"], a["device"], read_token(a["token_file"]),
                                    int(a["max_message_mb"] * (1 << 20)))
    m = server.meta
    print(f"{PROG}: serving {m['recipe']} ({a['checkpoint']}, sha256 {m['checkpoint_sha256'][:12]}) on "
          f"ws://{a['host']}:{a['port']}" + (" (token required)" if server.token else ""), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
