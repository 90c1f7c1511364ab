"""MP4 videos of rollouts (H.264 through imageio's ffmpeg plugin, part of the ``sim`` extra)."""
from __future__ import annotations

import os

import numpy as np

from modmimic.envs.base import SimulatorNotInstalled


class VideoWriter:
    """Appends RGB frames ``[H, W, 3]`` uint8 to an MP4 file at ``fps`` frames per second."""

    def __init__(self, path: str, fps: int = 20):
        try:
            import imageio
        except ImportError:
            raise SimulatorNotInstalled("writing videos needs imageio and imageio-ffmpeg: "
                                        "pip install 'modmimic[sim]'") from None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        # macro_block_size=1: any frame size (ffmpeg would otherwise resize to multiples of 16)
        self._writer = imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=1)
        self.frames = 0

    def append(self, frame: np.ndarray) -> None:
        self._writer.append_data(np.ascontiguousarray(frame, dtype=np.uint8))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
