"""ALOHA transfer cube, end to end (issue #26, slow suite): 50 demos of the scripted expert (``modmimic.aloha_expert``),
ACT with ``preset=fast`` for 10 000 steps (``train.num_epochs=100``) on the joint positions and the cube's pose
(``agent_pos``, ``env_state``: a privileged state, not the ACT paper's cameras), trained in one run, evaluated over 50
episodes from initial states no demo was generated from. Measured in docs/benchmarks_envs.md ("ACT on the scripted
transfer cube"): 0.94, 0.84, 0.94 over three training seeds (this test trains seed 1, the default). About 75 s of
demos, 5 min of training and 30 s of rollouts on one CPU thread."""
import os

import pytest

pytest.importorskip("dm_control", reason="dm-control is not installed: pip install 'modmimic[aloha]'")
pytest.importorskip("gym_aloha", reason="gym-aloha is not installed: pip install 'modmimic[aloha]'")

from modmimic.config import compose  # noqa: E402
from modmimic.demos import generate  # noqa: E402
from modmimic.eval import evaluate  # noqa: E402
from modmimic.trainer import train  # noqa: E402


@pytest.mark.slow
def test_act_learns_the_scripted_transfer_cube(tmp_path):
    data = str(tmp_path / "cube.hdf5")
    made = generate("aloha_transfer_cube", 50, data, progress=None)
    assert made["demos"] == 50
    cfg = compose("act", ["preset=fast", f"train.data={data}", f"train.output_dir={tmp_path}",
                          "observation.modalities.obs.low_dim=[agent_pos,env_state]", "train.num_epochs=100",
                          "experiment.rollout.enabled=false", "experiment.logging.log_tb=false"])
    r = train(cfg, progress=False)
    assert r["epoch"] == cfg.train.num_epochs
    s = evaluate(os.path.join(r["run_dir"], "models", "last.pth"), episodes=50)
    assert s["Num_Episodes"] == 50
    assert s["Success_Rate"] >= 0.8, f"ACT on the scripted transfer cube: {s['Num_Success']}/50"
