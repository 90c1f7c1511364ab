"""Atomic file writes: write a temporary file in the target's folder, flush it to disk, then rename over the
target. A crash at any moment leaves either the old file or the new one, never a partial file."""
from __future__ import annotations

import io
import os
import tempfile


def current_umask() -> int:
    """The process umask (read from ``/proc`` where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write_bytes(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # mkstemp creates 0600; the file gets the mode a plain open() would give
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: str, text: str) -> None:
    _atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj, path: str) -> None:
    buf = io.BytesIO()
    import torch  # (lazily: the logger imports this module on paths that report errors before torch loads)

    torch.save(obj, buf)
    _atomic_write_bytes(path, lambda f: f.write(buf.getbuffer()))


class written_in_place:
    """``with written_in_place(out) as tmp:`` — write a whole output (an HDF5 file, a folder) at ``tmp``
    (``<out>.partial``); it is moved over ``out`` when the block ends normally and removed when it raises, so a
    killed or failed write never leaves a file that looks finished."""

    def __init__(self, out_path: str):
        self.out = out_path
        self.tmp = out_path + ".partial"

    def __enter__(self) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        return self.tmp

    def __exit__(self, kind, value, tb):
        if kind is None:
            os.replace(self.tmp, self.out)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)
        return False
