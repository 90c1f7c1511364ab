"""Sets of environments stepped together: in this process (:class:`LocalEnvs`) or one worker process per
environment (:class:`WorkerEnvs`, the parallel evaluator).

Both take requests in two phases, ``send(i, request)`` then ``recv(i)``, so the caller sends a request to every
environment before waiting for any answer (workers simulate concurrently). A request is one of

    ("reset", seed, opts)      new episode drawn from ``seed``
    ("reset_to", state, opts)  the given simulator state
    ("step", action, opts)     one step
    ("info", None, None)       {"name", "action_dimension", "env_meta", "success_signal"}

and the answer a dict: ``obs`` (and, after a step, ``reward``, ``done``, ``success``; after a reset of an environment
with a ``current_task``, such as a Meta-World task set, ``task``: the episode's task name), plus ``state`` (the flat
simulator state of the new observation) when ``opts["state"]``, ``model`` (the model XML) when ``opts["model"]`` and
``frame`` (an RGB image) when ``opts["frame"] = (height, width, camera)``.

A worker that raises, dies or does not answer within ``timeout`` seconds ends the whole set: every worker is
terminated and :class:`EnvWorkerError` names the environment, the request and the worker's traceback.
This module does not import torch, so worker processes start quickly.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import traceback
import types
from multiprocessing.connection import wait

from modmimic.envs import EnvError, SimulatorNotInstalled, env_from_metadata


class EnvWorkerError(RuntimeError):
    """An environment worker process failed, died or stopped answering."""


def execute(env, request) -> dict:
    """Carry out one request on ``env`` (shared by in-process and worker environments)."""
    cmd, arg, opts = request
    opts = opts or {}
    if cmd == "info":
        return {"name": env.name, "action_dimension": int(env.action_dimension), "env_meta": env.serialize(),
                "success_signal": getattr(env, "success_signal", None)}
    if cmd == "reset":
        out = {"obs": env.reset(seed=arg)}
    elif cmd == "reset_to":
        out = {"obs": env.reset_to(arg)}
    elif cmd == "step":
        obs, reward, done, _ = env.step(arg)
        out = {"obs": obs, "reward": reward, "done": done, "success": env.is_success()}
    else:
        raise ValueError(f"unknown environment request {cmd!r}")
    if cmd != "step" and getattr(env, "current_task", None) is not None:  # a task set (Meta-World MT10): this episode's
        out["task"] = str(env.current_task)
    if opts.get("state") or opts.get("model"):
        st = env.get_state(include_model=bool(opts.get("model")))
        out["state"] = st["states"]
        if opts.get("model"):
            out["model"] = st["model"]
            out["ep_meta"] = st.get("ep_meta")
    if opts.get("frame"):
        h, w, cam = opts["frame"]
        out["frame"] = env.render(height=h, width=w, camera_name=cam)
    return out


class LocalEnvs:
    """Environments in this process, stepped one after the other."""

    def __init__(self, envs):
        self.envs = list(envs)
        self._answers = [None] * len(self.envs)

    @classmethod
    def from_metadata(cls, env_meta: dict, num_envs: int = 1, **make_kwargs) -> "LocalEnvs":
        return cls([env_from_metadata(env_meta, **make_kwargs) for _ in range(num_envs)])

    def __len__(self) -> int:
        return len(self.envs)

    def send(self, i: int, request) -> None:
        self._answers[i] = execute(self.envs[i], request)

    def recv(self, i: int) -> dict:
        out, self._answers[i] = self._answers[i], None
        return out

    def close(self) -> None:
        for e in self.envs:
            e.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _error(e: BaseException) -> dict:
    return {"traceback": traceback.format_exc(), "message": f"{type(e).__name__}: {e}",
            "env_error": type(e).__name__ if isinstance(e, EnvError) else None}


def _worker_main(conn, env_meta: dict, make_kwargs: dict, index: int) -> None:
    """Worker process: build one environment, then answer requests until told to stop or the parent goes away."""
    try:
        env = env_from_metadata(env_meta, **make_kwargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", _error(e)))
        conn.close()
        return
    conn.send(("ok", None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):  # the parent is gone or interrupted
            break
        if request is None:
            break
        try:
            conn.send(("ok", execute(env, request)))
        except BaseException as e:  # noqa: BLE001 - reported to the parent, then this worker stops
            try:
                conn.send(("error", _error(e)))
            except (OSError, BrokenPipeError):
                pass
            break
    env.close()
    conn.close()


@contextlib.contextmanager
def _without_main_module():
    """While starting a ``spawn`` worker, hide the ``__main__`` module: the worker then imports only what its target
    needs (this module and the simulator), not the user's script (which would re-run an unguarded script, or import
    torch for nothing)."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class WorkerEnvs:
    """``num_envs`` environments, each in its own worker process (``spawn`` start method: safe with MuJoCo's GL
    contexts and torch threads), connected by pipes."""

    def __init__(self, env_meta: dict, num_envs: int, start_method: str = "spawn", timeout: float = 120.0,
                 start_timeout: float = 600.0, **make_kwargs):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.timeout = float(timeout)
        self.procs, self.conns, self._pending = [], [], [None] * num_envs
        self._closed = False
        ctx = mp.get_context(start_method)
        try:
            for i in range(num_envs):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_worker_main, args=(child, env_meta, make_kwargs, i), daemon=True,
                                name=f"modmimic-env-{i}")
                with _without_main_module():
                    p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
            for i in range(num_envs):
                self._pending[i] = ("start", None, None)
                self._wait(i, start_timeout)
        except BaseException:
            self.close(force=True)
            raise

    def __len__(self) -> int:
        return len(self.procs)

    def send(self, i: int, request) -> None:
        self._pending[i] = request
        try:
            self.conns[i].send(request)
        except (BrokenPipeError, OSError):
            self._fail(i, "the worker process is gone")

    def recv(self, i: int) -> dict:
        return self._wait(i, self.timeout)

    def _wait(self, i: int, timeout: float):
        conn, proc = self.conns[i], self.procs[i]
        ready = wait([conn, proc.sentinel], timeout)
        if conn in ready or conn.poll(0):
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                proc.join(1.0)
                self._fail(i, f"the worker process died (exit code {proc.exitcode})")
            if status == "error":
                if payload["env_error"] and self._pending[i][0] == "start":  # bad metadata: say it plainly
                    self.close(force=True)
                    cls = SimulatorNotInstalled if payload["env_error"] == "SimulatorNotInstalled" else EnvError
                    raise cls(payload["message"].split(": ", 1)[1])
                self._fail(i, f"the environment raised {payload['message']}\n{payload['traceback'].rstrip()}")
            return payload
        if proc.sentinel in ready:
            proc.join(1.0)
            self._fail(i, f"the worker process died (exit code {proc.exitcode})")
        self._fail(i, f"no answer within {timeout:g} s (a hung simulator?)")

    def _fail(self, i: int, why: str):
        req = self._pending[i]
        what = "starting the environment" if req is None or req[0] == "start" else f"a {req[0]!r} request"
        pid = self.procs[i].pid
        self.close(force=True)
        raise EnvWorkerError(f"environment worker {i} (pid {pid}) failed during {what}: {why}. All environment "
                             "workers have been stopped.")

    def close(self, force: bool = False) -> None:
        """Stop every worker: politely (``force=False``), then terminate and kill what is left."""
        if self._closed:
            return
        self._closed = True
        if not force:
            for c in self.conns:
                try:
                    c.send(None)
                except (BrokenPipeError, OSError):
                    pass
            for p in self.procs:
                p.join(5.0)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
        for c in self.conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(force=exc[0] is not None)
        return False

    def __del__(self):
        try:
            self.close(force=True)
        except Exception:  # noqa: BLE001
            pass


def make_envs(env_meta: dict, num_envs: int = 1, parallel: bool | None = None, **kwargs):
    """``num_envs`` environments: workers when ``parallel`` (default: when ``num_envs > 1``), else in-process."""
    parallel = num_envs > 1 if parallel is None else parallel
    if parallel:
        return WorkerEnvs(env_meta, num_envs, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("start_method", "timeout", "start_timeout")}
    return LocalEnvs.from_metadata(env_meta, num_envs, **kwargs)


