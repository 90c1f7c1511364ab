"""Everyday use: what the terminal says about rollouts (plan, progress, result, summary), Ctrl-C before the first
checkpoint, per-term curves, Weights & Biases offline files, the TD3-BC observation-key message, the fast key check,
the namespace-package check, and video rendering that leaves the episodes unchanged."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from modmimic.config import ConfigError, compose, default_config
from modmimic.data.hdf5 import DatasetError
from modmimic.logger import RunLogger, curve_panels, read_metrics
from modmimic.rollout import TrainingRollouts
from modmimic.trainer import rollout_plan, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def overrides(reach, out, tiny, recipe="bc", *extra):
    return [f"train.data={reach}", f"train.output_dir={out}", "train.batch_size=8",
            "experiment.epoch_every_n_steps=3", "experiment.logging.log_tb=false", *tiny(recipe), *extra]


ROLLOUTS = ["experiment.rollout.enabled=true", "experiment.rollout.n=3", "experiment.rollout.horizon=10",
            "experiment.render_video=false"]


def test_short_run_rolls_out_at_the_end_with_progress_plan_and_summary(reach_hdf5, tmp_path, tiny, capsys):
    """rate 50 > 2 epochs: at_end still evaluates at epoch 2; the start-up line says so, progress and the result
    are printed, Timing_Stats/Rollout is logged, and the summary names checkpoints, success rates and times."""
    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=2", *ROLLOUTS))
    r = train(cfg, rollout_fn=TrainingRollouts(progress=None), progress=False)
    out = capsys.readouterr().out
    assert "rollouts: 3 episodes in PointReach (horizon 10) at epoch 2 (every 50 epochs, and at the last epoch)" in out
    assert "epoch 2/2 rollout PointReach: 3/3 episodes" in out and "episodes/s" in out
    line = next(x for x in out.splitlines() if x.startswith("epoch 2/2"))
    assert "PointReach success" in line and "rollout" in line and "[" in line
    assert "PointReach success" not in next(x for x in out.splitlines() if x.startswith("epoch 1/2"))
    recs = read_metrics(os.path.join(r["run_dir"], "logs", "metrics.jsonl"))
    assert "Timing_Stats/Rollout" not in recs[0] and recs[1]["Timing_Stats/Rollout"] > 0
    k, n = recs[1]["Rollout/Num_Success/PointReach"], recs[1]["Rollout/Num_Episodes/PointReach"]
    assert n == 3
    summary = r["summary"]
    assert summary.startswith(f"run directory: {r['run_dir']}") and summary in out
    assert os.path.join(r["run_dir"], "models", "best_rollout_success.pth") in summary
    assert f"final success rate (PointReach, epoch 2): {k / n:.3f} (95% CI [" in summary and f"{k}/3)" in summary
    assert "best success rate (PointReach, epoch 2)" in summary
    assert "train " in summary and "validation " in summary and "rollouts " in summary


def test_rollout_plan_says_why_there_are_none(reach_hdf5, tmp_path, tiny):
    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=2", *ROLLOUTS,
                                  "experiment.rollout.at_end=false"))
    line = rollout_plan(cfg, object(), None, 1, 2)
    assert line == ("rollouts: none in epochs 1-2 (experiment.rollout.rate=50 > train.num_epochs=2 and "
                    "experiment.rollout.at_end=false)")
    assert rollout_plan(cfg, None, "no simulator installed: no module named 'robosuite'", 1, 2) == \
        "rollouts: none (no simulator installed: no module named 'robosuite')"
    off = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc"))
    assert rollout_plan(off, None, None, 1, 2) == "rollouts: none (experiment.rollout.enabled=false)"


def _interrupt_at(epoch_to_stop):
    def fn(policy, epoch, cfg, env_meta, run_dir=None):
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt
        return None
    return fn


def test_ctrl_c_before_the_first_checkpoint_leaves_no_run_dir(reach_hdf5, tmp_path, tiny, capsys):
    from modmimic.train import report

    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=3",
                                  "experiment.rollout.enabled=true", "experiment.rollout.rate=1"))
    with pytest.raises(KeyboardInterrupt) as info:
        train(cfg, rollout_fn=_interrupt_at(1), progress=False)
    run_dir = info.value.modmimic_discarded_run_dir
    assert not os.path.exists(run_dir) and os.listdir(os.path.join(tmp_path, "test")) == []
    assert report(info.value) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was written" in err and f"{run_dir} was removed" in err and "/models/" not in err


def test_ctrl_c_after_a_checkpoint_names_it(reach_hdf5, tmp_path, tiny, capsys):
    from modmimic.train import report

    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=3",
                                  "experiment.rollout.enabled=true", "experiment.rollout.rate=1"))
    with pytest.raises(KeyboardInterrupt) as info:
        train(cfg, rollout_fn=_interrupt_at(2), progress=False)
    run_dir = info.value.modmimic_run_dir
    assert os.path.isfile(os.path.join(run_dir, "models", "last.pth"))
    assert report(info.value) == 130
    err = capsys.readouterr().err
    assert f"the last checkpoint is {os.path.join(run_dir, 'models', 'last.pth')}" in err
    assert f"resume_dir={run_dir}" in err


def test_curves_plot_every_loss_term_per_update(tmp_path):
    """IQL's metric names: one panel per update with train and valid of every loss term; success with its CI."""
    log = RunLogger(str(tmp_path), log_tb=False)
    for e in (1, 2, 3):
        rec = {}
        for split in ("Train", "Valid"):
            rec.update({f"{split}/Loss": 3.0 / e, f"{split}/critic/loss": 2.0 / e, f"{split}/critic/critic1_loss": 1.0 / e,
                        f"{split}/critic/critic2_loss": 1.0 / e, f"{split}/vf/loss": 0.5 / e,
                        f"{split}/actor/loss": 0.5 / e, f"{split}/critic/q_pred": 7.0})
        if e == 3:
            rec.update({"Rollout/Success_Rate/Lift": 0.5, "Rollout/Success_Rate_CI95_Low/Lift": 0.2,
                        "Rollout/Success_Rate_CI95_High/Lift": 0.8})
        log.record(e, rec)
    log.plot_curves()
    log.close()
    panels = log.plotted
    assert list(panels) == ["total", "actor", "critic", "vf", "rollout success rate"]
    assert sorted(panels["critic"]) == ["train critic1_loss", "train critic2_loss", "train loss",
                                        "valid critic1_loss", "valid critic2_loss", "valid loss"]
    assert panels["vf"]["valid loss"] == [(1, 0.5), (2, 0.25), (3, 0.5 / 3)]
    assert panels["total"]["train Loss"] == [(1, 3.0), (2, 1.5), (3, 1.0)]
    assert panels["rollout success rate"] == {"Lift": [(3, 0.5, 0.2, 0.8)]}
    assert os.path.getsize(tmp_path / "curves.png") > 0
    assert curve_panels([]) == {}


def test_wandb_offline_run_files(reach_hdf5, tmp_path, tiny, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=2",
                                  "experiment.logging.log_wandb=true", "experiment.logging.wandb_proj_name=mm-test"))
    import wandb

    try:
        r = train(cfg, rollout_fn=None, progress=False)
    finally:  # stop this process's wandb-core service: left running, it spun at a third of a core for the rest of
        wandb.teardown()  # the suite (the run's files are written and closed by then: wandb.finish in RunLogger)
    runs = glob.glob(os.path.join(r["run_dir"], "logs", "wandb", "offline-run-*"))
    assert len(runs) == 1
    assert glob.glob(os.path.join(runs[0], "run-*.wandb"))
    # offline runs keep everything in the run's .wandb record log (protobuf; names and JSON values verbatim)
    blob = open(glob.glob(os.path.join(runs[0], "run-*.wandb"))[0], "rb").read()
    recs = read_metrics(os.path.join(r["run_dir"], "logs", "metrics.jsonl"))
    for rec in recs:
        assert json.dumps(rec["Train/Loss"]).encode() in blob
    for name in (b"Train/Loss", b"Timing_Stats/Train_Epoch", b"mm-test", b"recipe_name", b"num_epochs"):
        assert name in blob, name


def test_td3_bc_on_a_dataset_without_flat_names_the_override(reach_hdf5, tmp_path, tiny):
    extra = [o for o in tiny("td3_bc") if not o.startswith("observation.")]
    cfg = compose("td3_bc", [f"train.data={reach_hdf5}", f"train.output_dir={tmp_path}", "train.batch_size=8",
                             "experiment.epoch_every_n_steps=2", "train.num_epochs=1", *extra])
    with pytest.raises(DatasetError) as info:
        train(cfg, rollout_fn=None, progress=False)
    msg = str(info.value)
    assert "'flat'" in msg and "D4RL" in msg and "observation.modalities.obs.low_dim=[goal_pos,pos,vel]" in msg
    assert not os.path.exists(tmp_path / "test")  # nothing written


@pytest.mark.parametrize("recipe", ["bc", "td3_bc", "iris"])
def test_key_check_sees_the_composed_keys(recipe):
    """The key check (before hydra composes anything) knows exactly the keys a composition has."""
    from modmimic.config import _leaf_paths, valid_keys

    assert sorted(valid_keys(recipe)) == sorted(p for p, _ in _leaf_paths(default_config(recipe)))
    with pytest.raises(ConfigError, match="unknown config key 'train.num_epoch'.*num_epochs"):
        compose(recipe, ["train.num_epoch=2"])


def test_a_shadowing_modmimic_folder_is_named(tmp_path):
    os.symlink(REPO, tmp_path / "modmimic")
    p = subprocess.run([sys.executable, "-m", "modmimic.train", "recipe=bc"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert p.returncode == 2, p.stderr
    assert "namespace package" in p.stderr and str(tmp_path / "modmimic") in p.stderr


@pytest.mark.slow
def test_video_does_not_change_the_episodes(tmp_path):
    """Lift with and without rendering: identical actions, observations and lengths (rendering touches no RNG or
    simulator state)."""
    pytest.importorskip("robosuite")
    import torch

    from modmimic.policy import RolloutPolicy
    from modmimic.rollout import rollout
    from modmimic.trainer import build_data

    cfg = compose("bc", [f"train.output_dir={tmp_path}", "algo.actor_layer_dims=[16]"])
    data = build_data(cfg)
    from modmimic.algo import algo_factory

    algo = algo_factory(cfg.algo_name, cfg, data.obs_shapes, data.ac_dim, "cpu")
    policy = RolloutPolicy(algo, None, None, ["actions"])
    runs = []
    for video in (None, str(tmp_path / "out.mp4")):
        torch.manual_seed(0)
        runs.append(rollout(policy, data.env_meta, 2, 12, seed=5, record=True, video_path=video, video_skip=4,
                            video_size=(64, 64)))
    assert os.path.getsize(tmp_path / "out.mp4") > 0
    for a, b in zip(*runs):
        assert a.length == b.length and a.ret == b.ret
        np.testing.assert_array_equal(a.trajectory["actions"], b.trajectory["actions"])
        np.testing.assert_array_equal(a.trajectory["states"], b.trajectory["states"])
        for k in a.trajectory["obs"]:
            np.testing.assert_array_equal(a.trajectory["obs"][k], b.trajectory["obs"][k])


def test_curves_draw_a_perfect_success_rate_and_never_stop_a_run(tmp_path):
    """50/50: the Wilson upper bound is 1.0 up to rounding (it stopped the README's main job at its last epoch); and a
    plot that cannot be drawn warns and turns plotting off instead of failing the run."""
    from modmimic.rollout import wilson_interval

    lo, hi = wilson_interval(50, 50)
    log = RunLogger(str(tmp_path), log_tb=False)
    log.record(1, {"Train/Loss": 1.0, "Rollout/Success_Rate/Lift": 1.0, "Rollout/Success_Rate_CI95_Low/Lift": lo,
                   "Rollout/Success_Rate_CI95_High/Lift": hi})
    assert hi < 1.0  # 0.9999999999999999: the upper error bar would be negative
    log.plot_curves()
    assert os.path.getsize(tmp_path / "curves.png") > 0
    def broken():
        raise ValueError("'yerr' must not contain negative values")  # what matplotlib raised

    log.plot_curves = broken
    log._plot_pending = True
    with pytest.warns(UserWarning, match="curves.png is not drawn any more"):
        log.close()
    assert log.plot is False
