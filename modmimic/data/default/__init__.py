"""The small dataset shipped inside the package: what ``python -m modmimic.train`` trains on when no ``dataset=``
is given.

Until the simulation issue provides real demonstrations, this is ``reach.hdf5``: 50 generated demonstrations of
the point-reaching task of :func:`modmimic.data.synthetic.make_reach_dataset` (2-D, observation keys ``pos``,
``goal_pos``, ``vel``; expert action ``clip(4 * (goal - pos))``; ``mask/train`` and ``mask/valid`` split 45/5).
Regenerate it with ``python -m modmimic.data.default``.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

FILENAME = "reach.hdf5"
OBS_KEYS = ["pos", "goal_pos", "vel"]
N_DEMOS = 50
SEED = 0


def default_dataset_path() -> str:
    """Absolute path of the embedded default dataset."""
    return str(Path(str(importlib.resources.files("modmimic.data.default"))) / FILENAME)


def regenerate(path: str | None = None) -> str:
    from modmimic.data.synthetic import make_reach_dataset

    path = path or default_dataset_path()
    make_reach_dataset(path, n_demos=N_DEMOS, dim=2, seed=SEED, max_len=40, valid_fraction=0.1)
    return path
