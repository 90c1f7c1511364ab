"""The small dataset shipped inside the package: what ``python -m modmimic.train`` trains on when no ``dataset=``
is given.

``lift.hdf5``: 200 demonstrations of robosuite's Lift (Panda, OSC_POSE, 20 Hz) by the scripted state-based expert
of :mod:`modmimic.demos` (``generate(task="Lift", n=200, seed=0)``: episode ``i`` starts from robosuite's seeded
initial state ``i``; every one succeeded), in robomimic's layout: ``env_args``, per demo ``states``, ``actions``,
sparse ``rewards``, ``dones``, ``obs``/``next_obs`` with robomimic's 9 low-dim keys (float32), and a seeded
``mask/train`` (180) / ``mask/valid`` (20) split. Arrays are gzip-compressed; each demo's MJCF XML is a compressed
``model_file`` dataset rather than robomimic's attribute (read it with :func:`modmimic.data.hdf5.read_model_file`).
Reading it needs no simulator; rollouts in Lift need the ``sim`` extra.

Regenerate it with ``python -m modmimic.data.default [PATH]`` (needs the ``sim`` extra; ~2 minutes).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

FILENAME = "lift.hdf5"
TASK = "Lift"
# robomimic's default low-dim observation keys for its Lift configs (modmimic's base config uses them too)
OBS_KEYS = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
N_DEMOS = 200
SEED = 0


def default_dataset_path() -> str:
    """Absolute path of the embedded default dataset."""
    return str(Path(str(importlib.resources.files("modmimic.data.default"))) / FILENAME)


def regenerate(path: str | None = None, progress=print) -> dict:
    """Write the default dataset (to ``path``, default the package's copy); returns the generation statistics."""
    from modmimic.demos import generate

    path = path or default_dataset_path()
    return generate(TASK, N_DEMOS, path, seed=SEED, obs_dtype="float32", valid_fraction=0.1, compress=True,
                    next_obs=True, compress_model=True, progress=progress)
