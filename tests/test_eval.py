"""Rollouts and evaluation without a simulator: the PointReach environment (the synthetic reach task), serial and
parallel evaluation, crashing workers, ``python -m modmimic.eval``, rollout datasets, bad input."""
import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from modmimic.algo import algo_factory
from modmimic.config import compose
from modmimic.data.hdf5 import load_episode_store, read_env_meta
from modmimic.data.sampler import WindowSampler
from modmimic.data.synthetic import make_reach_dataset, reach_expert, write_robomimic_hdf5
from modmimic.envs import EnvError, env_from_metadata
from modmimic.envs.vector import EnvWorkerError, LocalEnvs, WorkerEnvs
from modmimic.policy import (RolloutPolicy, load_checkpoint, make_checkpoint, policy_from_checkpoint,
                             save_checkpoint)
from modmimic.rollout import RolloutError, rollout, run_episodes, summarize, wilson_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ["pos", "goal_pos", "vel"]


def small(recipe, keys=KEYS):
    ov = [f"observation.modalities.obs.low_dim=[{','.join(keys)}]", "algo.actor_layer_dims=[64,64]",
          "algo.optim_params.policy.learning_rate.initial=0.001", "algo.rnn.hidden_dim=64", "train.batch_size=64"]
    if recipe == "bc_rnn":
        ov += ["train.seq_length=5", "algo.rnn.horizon=5"]
    return compose(recipe, ov)


def train_checkpoint(path, data, recipe, steps, keys=KEYS):
    torch.manual_seed(0)
    cfg = small(recipe, keys)
    store = load_episode_store(data, keys, load_next_obs=False)
    sampler = WindowSampler(store, cfg.train.batch_size, seq_length=cfg.train.seq_length, seed=0)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    algo.set_train()
    for _ in range(steps):
        algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    save_checkpoint(path, make_checkpoint(algo, env_meta=store.env_meta,
                                          action_normalization_stats=store.action_normalization_stats()))
    return path


@pytest.fixture(scope="module")
def reach(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "reach.hdf5")
    make_reach_dataset(path, n_demos=40, seed=0)
    return path


@pytest.fixture(scope="module")
def ckpts(reach, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {r: train_checkpoint(str(d / f"{r}.pth"), reach, r, 500) for r in ("bc", "bc_rnn")}


def no_workers_left():
    for _ in range(50):
        if not multiprocessing.active_children():
            return True
        time.sleep(0.1)
    return False


def test_point_reach_env_reproduces_the_dataset(reach):
    env = env_from_metadata(read_env_meta(reach))
    store = load_episode_store(reach, KEYS)
    import h5py

    with h5py.File(reach) as f:
        demo = f["data/demo_3"]
        obs = env.reset_to({"states": demo["states"][0]})
        for k in KEYS:
            assert np.allclose(obs[k], demo[f"obs/{k}"][0])
        for t in range(len(demo["actions"])):  # replaying the actions reproduces every next observation
            obs, r, done, _ = env.step(demo["actions"][t])
            for k in KEYS:
                assert np.allclose(obs[k], demo[f"next_obs/{k}"][t])
        assert env.is_success()["task"] and r == 1.0
    assert store.num_samples > 0
    # the same seed gives the same initial state
    a, b = env.reset(seed=7), env_from_metadata(read_env_meta(reach)).reset(seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in KEYS)


def test_wilson_interval():
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    lo, hi = wilson_interval(45, 50)
    assert 0.78 < lo < 0.79 and 0.95 < hi < 0.96


class ExpertPolicy:
    """A stand-in RolloutPolicy: the reach expert, with per-environment call counters to check resets."""

    class _Algo:
        obs_shapes = {"pos": (2,), "goal_pos": (2,)}
        goal_shapes = {}
        ac_dim = 2

    policy = _Algo()

    def start_episode(self, num_envs=1):
        self.steps = np.zeros(num_envs, int)
        self.history = []

    def reset_envs(self, done):
        self.steps[np.asarray(done)] = 0

    def __call__(self, ob, goal=None, batched_ob=False):
        self.steps += 1
        self.history.append(self.steps.copy())
        return reach_expert(ob["pos"], ob["goal_pos"])


def test_expert_succeeds_and_recording_matches_the_environment(reach):
    meta = read_env_meta(reach)
    eps = rollout(ExpertPolicy(), meta, 5, 40, seed=3, record=True)
    assert all(e.success for e in eps) and summarize(eps)["Success_Rate"] == 1.0
    env = env_from_metadata(meta)
    for e in eps:
        tr = e.trajectory
        assert len(tr["actions"]) == e.length == len(tr["states"]) == len(tr["obs"]["pos"])
        obs = env.reset_to({"states": tr["states"][0]})
        assert np.array_equal(obs["pos"], tr["obs"]["pos"][0])
        assert tr["dones"][-1] == 1 and tr["rewards"][-1] == 1.0
        assert np.array_equal(tr["next_obs"]["pos"][:-1], tr["obs"]["pos"][1:])


@pytest.mark.parametrize("recipe", ["bc", "bc_rnn"])
def test_parallel_evaluation_equals_serial(ckpts, reach, recipe):
    policy, ckpt = policy_from_checkpoint(ckpt_path=ckpts[recipe])
    meta = ckpt["env_metadata"]
    serial = rollout(policy, meta, 9, 40, seed=11, num_envs=1, record=True)
    assert summarize(serial)["Success_Rate"] >= 0.5  # the policy learned something: outcomes are not trivial
    for k in (2, 3):
        par = rollout(policy, meta, 9, 40, seed=11, num_envs=k, record=True)
        assert [e.index for e in par] == list(range(9))
        assert len({e.slot for e in par}) == k  # episodes really were spread over the workers
        for a, b in zip(serial, par):
            assert (a.seed, a.success, a.length, a.ret) == (b.seed, b.success, b.length, b.ret)
            np.testing.assert_allclose(a.trajectory["actions"], b.trajectory["actions"], atol=1e-5)
            np.testing.assert_array_equal(a.trajectory["states"][0], b.trajectory["states"][0])
    assert no_workers_left()


def test_more_envs_than_episodes_and_per_env_resets(reach):
    meta = read_env_meta(reach)
    pol = ExpertPolicy()
    with LocalEnvs.from_metadata(meta, 3) as envs:
        eps = run_episodes(pol, envs, 2, 40, seed=0)
    assert [e.index for e in eps] == [0, 1] and all(e.success for e in eps)
    with LocalEnvs.from_metadata(meta, 2) as envs:
        eps = run_episodes(pol, envs, 5, 40, seed=0)
    # each slot's policy state restarted exactly at the start of each of its episodes
    hist = np.stack(pol.history)
    for j in (0, 1):
        expected = np.concatenate([np.arange(1, e.length + 1) for e in eps if e.slot == j])
        np.testing.assert_array_equal(hist[:len(expected), j], expected)


@pytest.mark.parametrize("mode,match", [("raise", "injected failure at step 3"),
                                        ("exit", "worker process died \\(exit code 3\\)"),
                                        ("hang", "no answer within 3 s")])
def test_crashing_worker_gives_a_clear_error_and_no_hung_process(reach, mode, match):
    meta = read_env_meta(reach)
    meta["env_kwargs"].update(crash_at_step=3, crash_mode=mode)
    t0 = time.time()
    with pytest.raises(EnvWorkerError, match=match) as info:
        with WorkerEnvs(meta, 2, timeout=3.0) as envs:
            run_episodes(ExpertPolicy(), envs, 4, 40, seed=0)
    assert "All environment workers have been stopped" in str(info.value)
    assert time.time() - t0 < 30
    assert no_workers_left()


def test_bad_env_metadata_is_a_clear_error(reach):
    with pytest.raises(EnvError, match="unknown env type 7"):
        env_from_metadata({"env_name": "Lift", "type": 7, "env_kwargs": {}})
    with pytest.raises(EnvError, match="no env metadata"):
        env_from_metadata({})
    with pytest.raises(EnvError, match="unknown env_kwargs \\['speed'\\]"):
        WorkerEnvs({"env_name": "PointReach", "type": 2, "env_kwargs": {"speed": 3}}, 1)
    assert no_workers_left()


def run_eval(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "modmimic.eval", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_eval_cli_parallel_with_rollout_dataset_round_trip(ckpts, tmp_path):
    out, js = str(tmp_path / "rollouts.hdf5"), str(tmp_path / "eval.json")
    r = run_eval(f"checkpoint={ckpts['bc_rnn']}", "episodes=6", "num_envs=2", "horizon=40", "seed=5",
                 f"write_dataset={out}", f"json={js}")
    assert r.returncode == 0, r.stderr
    assert "success rate" in r.stdout and "95% CI" in r.stdout and "episodes/s" in r.stdout
    s = json.load(open(js))
    assert s["Num_Episodes"] == 6 and len(s["episodes"]) == 6
    # the rollout dataset is readable by modmimic's own loader and holds exactly the episodes played
    store = load_episode_store(out, KEYS)
    assert store.lengths.tolist() == [e["length"] for e in s["episodes"]]
    meta = read_env_meta(out)
    assert meta["env_name"] == "PointReach"
    env = env_from_metadata(meta)
    import h5py

    with h5py.File(out) as f:
        assert f["data"].attrs["total"] == sum(e["length"] for e in s["episodes"])
        for i, e in enumerate(s["episodes"]):
            d = f[f"data/demo_{i}"]
            obs = env.reset(seed=e["seed"])  # the recorded start is the seeded initial state
            assert np.allclose(obs["pos"], d["obs/pos"][0]) and np.allclose(d["states"][0][:2], obs["pos"])
            for t in range(len(d["actions"])):  # and the recorded actions replay the recorded observations
                obs, *_ = env.step(d["actions"][t])
                assert np.allclose(obs["pos"], d["next_obs/pos"][t])
            assert bool(d["dones"][-1]) == e["success"]
    # same seeds, serial: the same outcomes
    from modmimic.eval import main

    r1 = Result(main([f"checkpoint={ckpts['bc_rnn']}", "episodes=6", "horizon=40", "seed=5", f"json={js}",
                      "overwrite=true", "quiet=true"]), "", "")
    assert r1.returncode == 0, r1.stderr
    s1 = json.load(open(js))
    assert [(e["success"], e["length"]) for e in s1["episodes"]] == [(e["success"], e["length"]) for e in s["episodes"]]


class Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def eval_main(capsys):
    """``python -m modmimic.eval`` in this process (the subprocess route is tested once above)."""
    from modmimic.eval import main

    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def test_eval_bad_input(ckpts, reach, tmp_path, eval_main):
    run_eval = eval_main
    r = run_eval("checkpoint=/nonexistent.pth")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    r = run_eval(f"checkpoint={ckpts['bc']}", "episode=3")
    assert r.returncode == 2 and "did you mean 'episodes'" in r.stderr
    r = run_eval(f"checkpoint={ckpts['bc']}", "episodes=many")
    assert r.returncode == 2 and "episodes must be int" in r.stderr
    # a checkpoint whose env metadata names an unknown env type
    ck = load_checkpoint(ckpts["bc"])
    ck["env_metadata"] = {"env_name": "Lift", "type": 9, "env_kwargs": {}}
    bad = str(tmp_path / "badtype.pth")
    save_checkpoint(bad, ck)
    r = run_eval(f"checkpoint={bad}", "episodes=2")
    assert r.returncode == 2 and "unknown env type 9" in r.stderr, r.stderr
    # observation shapes that do not match the environment's (a 3-D reach environment for a 2-D policy)
    ck["env_metadata"] = {"env_name": "PointReach", "type": 2, "env_kwargs": {"dim": 3}}
    save_checkpoint(bad, ck)
    r = run_eval(f"checkpoint={bad}", "episodes=2", "num_envs=2")
    assert r.returncode == 2 and "observation 'pos' has shape (3,)" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one paragraph, no traceback
    # observation keys the environment does not have
    renamed = str(tmp_path / "renamed.hdf5")
    import h5py

    with h5py.File(reach) as f:
        demos = [{"obs": {"position" if k == "pos" else k: f[f"data/demo_{i}/obs/{k}"][()] for k in KEYS},
                  "actions": f[f"data/demo_{i}/actions"][()]} for i in range(4)]
    write_robomimic_hdf5(renamed, demos, env_args=read_env_meta(reach))
    keys = ["position", "goal_pos", "vel"]
    ck2 = train_checkpoint(str(tmp_path / "renamed.pth"), renamed, "bc", 2, keys=keys)
    r = run_eval(f"checkpoint={ck2}", "episodes=2")
    assert r.returncode == 2 and "needs observation keys ['position']" in r.stderr, r.stderr
    with pytest.raises(RolloutError, match="needs observation keys \\['position'\\]"):
        rollout(policy_from_checkpoint(ckpt_path=ck2)[0], read_env_meta(reach), 1, 5)


def test_training_rollout_hook(ckpts, tmp_path):
    from modmimic.rollout import TrainingRollouts

    policy, ckpt = policy_from_checkpoint(ckpt_path=ckpts["bc_rnn"])
    cfg = compose("bc_rnn", ["experiment.rollout.n=4", "experiment.rollout.horizon=40", "experiment.render_video=false"])
    hook = TrainingRollouts()
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    m1 = hook(policy, 1, cfg, ckpt["env_metadata"], run_dir=str(tmp_path))
    assert torch.equal(torch.rand(1), before)  # training's RNG stream is untouched
    m2 = hook(policy, 2, cfg, ckpt["env_metadata"], run_dir=str(tmp_path))
    assert set(m1) == {"PointReach"} and m1 == {k: {**v, "Time_Episode": m1[k]["Time_Episode"]} for k, v in m2.items()}
    assert {"Success_Rate", "Return", "Horizon"} <= set(m1["PointReach"])
    hook.close()
