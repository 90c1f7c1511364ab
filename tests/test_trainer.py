"""The training loop from Python: bit-exact resume for every recipe, validation that never steps anything, LR
schedules, seeding, run directories and the NaN stop."""
import json
import math
import os

import numpy as np
import pytest
import torch

from modmimic.algo import NonFiniteLossError
from modmimic.config import ConfigError, compose, default_config, list_recipes
from modmimic.data.hdf5 import DatasetError
from modmimic.policy import load_checkpoint, policy_from_checkpoint
from modmimic.trainer import (build_data, make_run_dir, resume_config, run_epoch, sampler_seed, train,
                              with_data)
from modmimic.algo import algo_factory  # noqa: E402

# awac: offline RL, sampling prepare steps; diffusion_policy: EMA target; act: chunked batches, a sampled latent
FAST_RESUME = ["bc", "bc_rnn", "bc_transformer", "hbc", "awac", "diffusion_policy", "act", "flow_policy", "rebrac",
               "cal_ql", "cql_awr", "vq_bet"]  # iris: slow (hbc's engine)


def optim_params_paths(cfg, prefix="algo"):
    """``algo[.<component>...].optim_params.<net>`` of every network with an optimizer, components included."""
    if cfg.get("components"):
        from modmimic.config import component_config

        return [p for n, spec in cfg.components.items() if spec is not None
                for p in optim_params_paths(component_config(cfg, n), f"{prefix}.{n}")]
    return [f"{prefix}.optim_params.{net}" for net in cfg.algo.get("optim_params") or {}]


def overrides(reach, out, tiny, recipe, *extra):
    return [f"train.data={reach}", f"train.output_dir={out}", "train.batch_size=8",
            "experiment.epoch_every_n_steps=3", "experiment.validate=true", "train.hdf5_filter_key=train",
            "train.hdf5_validation_filter_key=valid", "experiment.validation_epoch_every_n_steps=2",
            "experiment.logging.log_tb=false", *tiny(recipe), *extra]


def flat(x, prefix=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, f"{prefix}/{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from flat(v, f"{prefix}/{i}")
    else:
        yield prefix, x


def assert_same_state(a: dict, b: dict):
    """Networks, optimizer states and schedulers identical, bit for bit."""
    fa, fb = dict(flat(a)), dict(flat(b))
    assert fa.keys() == fb.keys()
    for k in fa:
        if torch.is_tensor(fa[k]):
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=[] if r in FAST_RESUME else [pytest.mark.slow])
                                    for r in list_recipes()])
def test_resume_is_bit_exact(recipe, reach_hdf5, tmp_path, tiny):
    """4 epochs == 2 epochs (stopped) + resume, for networks, optimizers, schedulers, samplers and RNG streams;
    a recipe-specific linear LR schedule over the 4 epochs makes the schedule part of the check."""
    schedules = [f"{path}.learning_rate.{k}" for path in optim_params_paths(default_config(recipe))
                 for k in ("epoch_schedule=[3]", "decay_factor=0.5")]
    common = overrides(reach_hdf5, tmp_path, tiny, recipe, "train.num_epochs=4", *schedules)
    full = train(compose(recipe, common + ["experiment.name=full"]), progress=False)
    part = train(compose(recipe, common + ["experiment.name=part", "train.stop_after_epoch=2"]), progress=False)
    assert part["epoch"] == 2
    resumed = train(resume_config(part["run_dir"], ["train.stop_after_epoch=null"]), progress=False)
    assert resumed["run_dir"] == part["run_dir"] and resumed["epoch"] == 4
    a = load_checkpoint(os.path.join(full["run_dir"], "models", "last.pth"))
    b = load_checkpoint(os.path.join(resumed["run_dir"], "models", "last.pth"))
    assert a["model"]["optimizers"], "the recipe has no optimizer state to compare"
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["trainer_state"]["samplers"], b["trainer_state"]["samplers"])
    assert torch.equal(a["trainer_state"]["rng"]["torch"], b["trainer_state"]["rng"]["torch"])
    assert a["variable_state"] == b["variable_state"]
    # the resumed run's log has every epoch once, with the same numbers
    la = [json.loads(x) for x in open(os.path.join(full["run_dir"], "logs", "metrics.jsonl"))]
    lb = [json.loads(x) for x in open(os.path.join(resumed["run_dir"], "logs", "metrics.jsonl"))]
    assert [r["epoch"] for r in lb] == [1, 2, 3, 4]
    for ra, rb in zip(la, lb):
        assert ra["Train/Loss"] == rb["Train/Loss"] and ra["Valid/Loss"] == rb["Valid/Loss"]
    if recipe == "bc":  # resuming a finished run does nothing
        snap = {f: os.path.getmtime(os.path.join(part["run_dir"], f)) for f in ("config.yaml", "models/last.pth")}
        again = train(resume_config(part["run_dir"]), progress=False)
        assert again["epoch"] == 4
        assert snap == {f: os.path.getmtime(os.path.join(part["run_dir"], f)) for f in snap}


def test_validation_steps_nothing(reach_hdf5, tmp_path, tiny):
    """A validation epoch leaves parameters, optimizer, per-step (cosine) schedule and step counter alone."""
    cfg = with_data(compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc",
                                            "algo.optim_params.policy.learning_rate.scheduler_type=cosine")))
    data = build_data(cfg)
    algo = algo_factory("bc", cfg, data.obs_shapes, data.ac_dim)
    run_epoch(algo, data.train_sampler, 3, 1, progress=False)
    before = {k: v.clone() for k, v in algo.nets.state_dict().items()}
    lr, step = algo.optimizers["policy"].param_groups[0]["lr"], algo._step
    sched = algo.lr_schedulers["policy"].last_epoch
    with torch.no_grad():
        m = run_epoch(algo, data.valid_sampler, 5, 1, validate=True, progress=False)
    assert "Loss" in m and not any(k.startswith("Optimizer/") for k in m)
    assert all(torch.equal(before[k], v) for k, v in algo.nets.state_dict().items())
    assert algo.optimizers["policy"].param_groups[0]["lr"] == lr and algo._step == step
    assert algo.lr_schedulers["policy"].last_epoch == sched
    m = run_epoch(algo, data.train_sampler, 3, 1, progress=False)
    assert algo.lr_schedulers["policy"].last_epoch == sched + 3  # per-step schedule advances on training steps
    assert {"Loss", "Time_Epoch", "Time_Data_Loading", "Time_Train_Batch", "Steps_per_Second"} <= set(m)


def test_epoch_schedule_and_log_names(reach_hdf5, tmp_path, tiny):
    r = train(compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=3",
                                      "algo.optim_params.policy.learning_rate.epoch_schedule=[1]",
                                      "algo.optim_params.policy.learning_rate.decay_factor=0.1")), progress=False)
    recs = [json.loads(x) for x in open(os.path.join(r["run_dir"], "logs", "metrics.jsonl"))]
    lrs = [rec["Optimizer/policy0_lr"] for rec in recs]
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(1e-5) and lrs[2] == pytest.approx(1e-5)
    assert [rec["step"] for rec in recs] == [3, 6, 9]
    names = set(recs[0])
    assert {"Train/Loss", "Valid/Loss", "Timing_Stats/Train_Epoch", "Timing_Stats/Valid_Epoch",
            "System/RAM Usage (MB)"} <= names
    assert r["best_valid_loss"] == min(rec["Valid/Loss"] for rec in recs)
    best = load_checkpoint(os.path.join(r["run_dir"], "models", "best_validation.pth"))
    assert best["variable_state"]["best_valid_loss"] == r["best_valid_loss"]


def test_seeds_make_runs_reproducible(reach_hdf5, tmp_path, tiny):
    def loss(seed, name):
        r = train(compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=1",
                                          f"train.seed={seed}", f"experiment.name={name}")), progress=False)
        return r["metrics"]["Train/Loss"]

    assert loss(3, "a") == loss(3, "b")
    assert loss(3, "c") != loss(4, "d")
    assert sampler_seed(1, 0) != sampler_seed(1, 1) != sampler_seed(2, 0)


def test_run_dirs_are_never_reused(tmp_path):
    cfg = compose("bc", [f"train.output_dir={tmp_path}", "experiment.name=x"])
    dirs = {make_run_dir(cfg) for _ in range(3)}
    assert len(dirs) == 3
    for d in dirs:
        assert os.path.isdir(os.path.join(d, "logs")) and os.path.isdir(os.path.join(d, "models"))


def test_nan_stops_and_keeps_last_good_checkpoint(reach_hdf5, tmp_path, tiny):
    """Epoch 1 trains normally; the schedule then multiplies the LR by 1e38 so epoch 2 diverges."""
    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=5",
                                  "experiment.epoch_every_n_steps=10",
                                  "algo.optim_params.policy.learning_rate.epoch_schedule=[1]",
                                  "algo.optim_params.policy.learning_rate.decay_factor=1e38"))
    with pytest.raises(NonFiniteLossError, match=r"loss 'bc'.*last good checkpoint .*last.pth \(epoch 1\)") as ei:
        train(cfg, progress=False)
    run_dir = ei.value.modmimic_run_dir
    ckpt = load_checkpoint(os.path.join(run_dir, "models", "last.pth"))
    assert ckpt["variable_state"]["epoch"] == 1
    policy, _ = policy_from_checkpoint(ckpt_dict=ckpt)
    assert "NonFiniteLossError" in open(os.path.join(run_dir, "logs", "error.txt")).read()


def test_default_dataset_is_real_lift_demos(tmp_path):
    """The embedded default: scripted Lift demos in robomimic's layout, small enough to ship, readable (and
    trainable) without a simulator."""
    import h5py

    from modmimic.data.hdf5 import read_env_meta, read_model_file

    cfg = with_data(compose("bc_rnn", []))
    path = cfg.train.data
    assert path.endswith("lift.hdf5") and os.path.isfile(path)
    assert os.path.getsize(path) <= 10_000_000
    assert list(cfg.observation.modalities.obs.low_dim) == ["robot0_eef_pos", "robot0_eef_quat",
                                                             "robot0_gripper_qpos", "object"]
    meta = read_env_meta(path)
    assert meta["env_name"] == "Lift" and meta["type"] == 1 and meta["env_kwargs"]["robots"] == ["Panda"]
    with h5py.File(path) as f:
        demos = [k for k in f["data"] if k.startswith("demo_")]
        assert len(demos) == 200 and int(f["data"].attrs["total"]) > 8000
        assert sorted(len(f[f"mask/{k}"]) for k in ("train", "valid")) == [20, 180]
        d = f["data/demo_0"]
        T = int(d.attrs["num_samples"])
        assert d["obs/object"].dtype == np.float32 and d["obs/object"].shape == (T, 10)
        assert d["actions"].shape == (T, 7) and d["states"].shape == (T, 32)
        assert d["rewards"][-1] == 1 and d["dones"][-1] == 1 and d["dones"][:-1].sum() == 0
        assert np.abs(d["actions"][()]).max() <= 1.0
        assert "<mujoco" in read_model_file(d)
    data = build_data(cfg)  # no simulator needed to read and sample it
    assert data.ac_dim == 7 and data.env_meta["env_name"] == "Lift"


def test_data_errors(reach_hdf5, tmp_path, tiny):
    base = [f"train.data={reach_hdf5}", *tiny("bc")]
    with pytest.raises(ConfigError, match="hdf5_validation_filter_key"):
        build_data(compose("bc", base + ["experiment.validate=true"]))
    with pytest.raises(DatasetError, match="share"):
        build_data(compose("bc", base + ["experiment.validate=true", "train.hdf5_validation_filter_key=valid"]))
    with pytest.raises(DatasetError, match="filter key 'nope'"):
        build_data(compose("bc", base + ["train.hdf5_filter_key=nope"]))
    with pytest.raises(ConfigError, match="normalization"):
        build_data(compose("bc", base + ["train.action_config.actions.normalization=minmax"]))


def test_validation_uses_train_statistics(reach_hdf5, tmp_path, tiny):
    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.hdf5_normalize_obs=true",
                                  "train.action_config.actions.normalization=min_max"))
    data = build_data(cfg)
    assert data.obs_normalization_stats is not None
    off_t, sc_t = data.train_sampler._affine
    off_v, sc_v = data.valid_sampler._affine
    assert torch.equal(off_t, off_v) and torch.equal(sc_t, sc_v)
    assert not math.isnan(float(off_t.sum())) and not torch.equal(sc_t, torch.ones_like(sc_t))


class FakeRollouts:
    """Success rate 0.2, 0.6, 0.4 at rollout epochs; records its calls."""

    def __init__(self):
        self.calls, self.closed = [], False

    def __call__(self, policy, epoch, cfg, env_meta, run_dir=None):
        policy.start_episode(3)
        a = policy({"pos": np.zeros((3, 2)), "goal_pos": np.ones((3, 2)), "vel": np.zeros((3, 2))}, batched_ob=True)
        assert a.shape == (3, 2) and not policy.policy.nets.training
        self.calls.append((epoch, env_meta["env_name"], run_dir))
        return {"PointReach": {"Success_Rate": [0.2, 0.6, 0.4][len(self.calls) - 1], "Return": 1.0,
                               "Time_Episode": 0.01}}

    def close(self):
        self.closed = True


def test_rollout_hook(reach_hdf5, tmp_path, tiny):
    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=6",
                                  "experiment.rollout.enabled=true", "experiment.rollout.rate=2"))
    fake = FakeRollouts()
    r = train(cfg, rollout_fn=fake, progress=False)
    assert [c[0] for c in fake.calls] == [2, 4, 6] and fake.calls[0][1] == "PointReach" and fake.closed
    assert fake.calls[0][2] == r["run_dir"]
    recs = [json.loads(x) for x in open(os.path.join(r["run_dir"], "logs", "metrics.jsonl"))]
    assert recs[1]["Rollout/Success_Rate/PointReach"] == 0.2 and "Rollout/Success_Rate/PointReach" not in recs[0]
    assert "Timing_Stats/Rollout_PointReach_Episode" in recs[1]
    best = load_checkpoint(os.path.join(r["run_dir"], "models", "best_rollout_success.pth"))
    assert best["variable_state"]["epoch"] == 4 and best["variable_state"]["best_success_rate"] == 0.6
    assert r["best_success_rate"] == 0.6


def test_rollouts_without_simulator_warn_and_skip(reach_hdf5, tmp_path, tiny):
    def missing(*a, **k):
        raise ImportError("no module named 'robosuite'")

    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=3",
                                  "experiment.rollout.enabled=true", "experiment.rollout.rate=1"))
    with pytest.warns(UserWarning, match="robosuite"):
        r = train(cfg, rollout_fn=missing, progress=False)
    assert r["epoch"] == 3


def test_metrics_log_survives_a_torn_line(tmp_path):
    from modmimic.logger import RunLogger, read_metrics

    log = RunLogger(str(tmp_path), log_tb=False, plot=False)
    for e in (1, 2, 3):
        log.record(e, {"Train/Loss": 1.0 / e}, step=10 * e)
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "Train/Lo')  # a crash in the middle of an append
    assert [r["epoch"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]
    log = RunLogger(str(tmp_path), log_tb=False, plot=False, start_epoch=3)  # resume from the epoch-2 checkpoint
    log.record(3, {"Train/Loss": 0.5}, step=30)
    log.close()
    recs = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [(r["epoch"], r["Train/Loss"]) for r in recs] == [(1, 1.0), (2, 0.5), (3, 0.5)]


def test_ckpt_path_initialises_weights(reach_hdf5, tmp_path, tiny):
    first = train(compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=1",
                                          "experiment.name=a")), progress=False)
    path = os.path.join(first["run_dir"], "models", "last.pth")
    cfg = compose("bc", overrides(reach_hdf5, tmp_path, tiny, "bc", "train.num_epochs=1", "experiment.name=b",
                                  f"experiment.ckpt_path={path}", "experiment.epoch_every_n_steps=1",
                                  "algo.optim_params.policy.learning_rate.initial=0.0"))
    second = train(cfg, progress=False)
    a = load_checkpoint(path)["model"]["nets"]
    b = load_checkpoint(os.path.join(second["run_dir"], "models", "last.pth"))["model"]["nets"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the weights are exactly the loaded ones
