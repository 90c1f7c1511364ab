"""A run directory is written by one process, and only inside itself.

* :class:`RunLock`: an exclusive lock (``<run dir>/.lock``, ``fcntl.flock``) held for the life of a run. A second
  writer (a ``resume=true`` of a run that is still training, a second restart) stops with a :class:`RunDirError`
  naming the holder (pid, host, start time). The kernel releases the lock when the holder dies, SIGKILL included,
  so a crashed run never leaves a stale lock. (``fcntl`` rather than the ``filelock`` package: its lock file is
  opened without following symlinks and records who holds it, which the message needs.)
* :func:`check_run_tree`: before a run writes into an existing directory (resume), nothing inside it may be a
  symbolic link or a special file, so no write lands outside it (``logs -> /elsewhere`` or
  ``logs/log.txt -> ~/.bashrc`` are refused, naming the link).
* :func:`open_append`: appends (``metrics.jsonl``, ``log.txt``, ``error.txt``) open the file without following a
  symlink (``O_NOFOLLOW``) and check it resolves inside the run directory. Whole-file writes go through
  :mod:`modmimic.io` (a fresh temporary file renamed over the target, which replaces a link rather than following
  it).
"""
from __future__ import annotations

import os
import socket
import stat
import time

from modmimic.config import ConfigError

LOCK_NAME = ".lock"


class RunDirError(ConfigError):
    """A run directory is in use by another process, or holds links or files a run must not write through."""


def inside(root: str, path: str) -> bool:
    """``path`` resolves (symlinks followed) to ``root`` or below it."""
    root, path = os.path.realpath(root), os.path.realpath(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_run_tree(run_dir: str) -> None:
    """Refuse a run directory that holds a symbolic link or a special file anywhere inside it."""
    for top, dirs, files in os.walk(run_dir, followlinks=False):
        for name in dirs + files:
            path = os.path.join(top, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode):
                raise RunDirError(f"{path} is a symbolic link (to {os.readlink(path)}); a run writes only inside its "
                                  f"run directory {run_dir}: remove the link or start a new run")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise RunDirError(f"{path} is not a regular file or folder; a run directory holds only those")


def open_append(run_dir: str, path: str, buffering: int = -1):
    """``open(path, "a")`` that neither follows a symlink at ``path`` nor writes outside ``run_dir``."""
    if not inside(run_dir, os.path.dirname(path)):
        raise RunDirError(f"{path} is outside the run directory {run_dir} (a folder on the way is a link)")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError:
        if os.path.islink(path):
            raise RunDirError(f"{path} is a symbolic link; a run writes only inside its run directory") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path} is not a regular file")
    return os.fdopen(fd, "a", buffering=buffering)


class RunLock:
    """An exclusive lock on ``run_dir`` for as long as it is held (``with RunLock(d):`` or ``acquire``/``release``)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.fd = None

    def holder(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f:
                text = f.read(256).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        return text or "an unknown process"

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if os.path.islink(self.path):
                raise RunDirError(f"{self.path} is a symbolic link; a run writes only inside its run directory"
                                  ) from None
            raise RunDirError(f"cannot lock the run directory {self.run_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirError(f"the run directory {self.run_dir} is in use by {self.holder()}: one process writes a "
                              "run at a time; wait for it to end (or stop it) and resume then") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


# --- stop signals ---------------------------------------------------------------------------------------------

class RunStopped(KeyboardInterrupt):
    """A run ended by SIGTERM or SIGUSR1 (SLURM's pre-emption warning, Kubernetes, ``timeout``). ``exit_code`` is
    128 + the signal number, as a shell reports a process killed by it; ``saved``: the checkpoint written on the way
    out (None when the run had none yet)."""

    def __init__(self, signum: int, message: str = "", saved: str | None = None):
        import signal

        self.signum, self.saved, self.exit_code = signum, saved, 128 + int(signum)
        name = signal.Signals(signum).name
        super().__init__(f"{name}{': ' + message if message else ''}")


class StopSignals:
    """SIGTERM and SIGUSR1 handlers for the life of a run (main thread only; the previous handlers come back after).

    Until the run has a checkpoint (``graceful`` false) a signal ends it at once, as Ctrl-C does: the new run
    directory, holding nothing, is removed. Afterwards the signal is only noted (``requested()``): the trainer finishes
    the step under way, saves ``last.pth`` (mid-epoch: the epoch's step count is saved too, so a resume continues
    bit for bit) and raises :meth:`stopped`. Under torchrun a signal always ends the run at once (the processes
    would have to agree on the step first); the last checkpoint is the previous epoch's."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.graceful = False
        self.signum = None
        self.raised = None  # the signal that ended the run at once (before graceful)
        self._old = {}
        self._holding, self._pending = False, None  # held(): a signal waits for the block's end

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False

    def held(self):
        """A context in which the stop signals wait: one that comes inside is handled as it ends (creating a run
        directory and registering it for removal must not be split by a stop)."""
        import contextlib

        @contextlib.contextmanager
        def holding():
            self._holding, self._pending = True, None
            try:
                yield
            finally:
                self._holding = False
                if self._pending is not None:
                    self._handle(self._pending, None)
        return holding()

    def _handle(self, signum, frame):
        if self._holding:
            self._pending = signum
            return
        if not self.graceful:
            self.raised = signum
            raise RunStopped(signum)
        self.signum = signum

    def requested(self) -> bool:
        """A signal came: noted (graceful), or raised at once. The second counts too, so a :class:`RunStopped`
        that library code swallowed (a broad ``except`` around a callback) still ends the run at the next check."""
        return self.signum is not None or self.raised is not None

    def check_raised(self) -> None:
        """Raise the :class:`RunStopped` of a signal that was to end the run at once, if one came and was lost."""
        if self.raised is not None:
            raise RunStopped(self.raised)

    def stopped(self, last_path: str, epoch: int, steps: int, n_steps: int) -> RunStopped:
        where = (f"after epoch {epoch}" if steps >= n_steps else f"in epoch {epoch} after step {steps} of {n_steps}")
        return RunStopped(self.signum, f"stopped {where}; {last_path} holds the run's state", saved=last_path)
