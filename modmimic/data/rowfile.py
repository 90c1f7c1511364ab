"""Rows of a ``[N, *shape]`` array kept in a raw file (the memory-mapped store's uint8 images).

Images stay on disk, one file per key, rows back to back (``N * prod(shape)`` bytes for uint8). :class:`RowFile`
gathers rows with ``pread`` into a fresh tensor instead of mapping the file: the kernel's page cache holds what was
read recently and is shared by every process reading the same file (a sweep, DDP ranks, DataLoader workers), while the
reading process's resident memory stays at one batch, however large the dataset. A mapping would count every page
ever touched as resident (random windows over a 4 GB file end up with ~4 GB resident).

A gather is vectorised index arithmetic plus one ``pread`` per run of consecutive rows, straight into the output
(about one per window: a window's steps are consecutive rows; a row repeated at a padded end is one more small read).
"""
from __future__ import annotations

import os

import numpy as np
import torch


def write_rows(f, array: np.ndarray) -> None:
    """Append rows to an open binary file (builds a :class:`RowFile` demo by demo, never the whole array in RAM)."""
    f.write(np.ascontiguousarray(array).tobytes())


class RowFile:
    """``[N, *shape]`` rows of ``dtype`` in ``filename`` (C order, no header); ``rf[rows]`` is a tensor of shape
    ``(*rows.shape, *shape)``. Picklable: a copy in another process reopens the file."""

    def __init__(self, filename: str, shape: tuple, dtype: torch.dtype = torch.uint8):
        self.filename, self.shape, self.dtype = filename, tuple(int(s) for s in shape), dtype
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        self._fd = os.open(filename, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if size != self.shape[0] * self.row_bytes:
            os.close(self._fd)
            raise ValueError(f"{filename} has {size} bytes, expected {self.shape[0]} rows of {self.row_bytes} bytes")

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> torch.Tensor:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        flat = rows.reshape(-1)
        out = torch.empty((len(flat), *self.shape[1:]), dtype=self.dtype)
        if len(flat) == 0:
            return out.reshape(*rows.shape, *self.shape[1:])
        if int(flat.min()) < 0 or int(flat.max()) >= self.shape[0]:
            raise IndexError(f"{self.filename}: row index out of range [0, {self.shape[0]})")
        r = flat.numpy()
        cut = np.flatnonzero(np.diff(r) != 1) + 1  # runs of consecutive rows (a window's steps): one read each,
        starts = np.concatenate([[0], cut]).tolist()  # straight into their place in the output
        ends = np.concatenate([cut, [len(r)]]).tolist()
        view, rb = memoryview(out.numpy()).cast("B"), self.row_bytes
        for s, e in zip(starts, ends):
            self._read_into(view[s * rb:e * rb], int(r[s]) * rb)
        return out.reshape(*rows.shape, *self.shape[1:])

    def _read_into(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(f"{self.filename}: short read at byte {offset + done} (file truncated?)")
            done += n

    def __getstate__(self):
        return {"filename": self.filename, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__init__(state["filename"], state["shape"], state["dtype"])

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
            self._fd = None

    def __repr__(self) -> str:
        return f"RowFile({self.filename!r}, shape={self.shape}, dtype={self.dtype})"
