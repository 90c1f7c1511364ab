"""Recording any policy as robomimic demonstrations: a tiny gymnasium env defined here (Dict and Box observation
spaces) and a scripted policy; the file holds what robomimic's layout asks, rebuilds its env, trains and evaluates."""
import json

import gymnasium
import h5py
import numpy as np
import pytest
from gymnasium import spaces

from modmimic.demos import main as demos_main
from modmimic.record import Recorder, RecordError, record

HORIZON = 40


class Reach(gymnasium.Env):
    """A point moves by 0.1 * action toward a goal; success (reward 1, terminated) within 0.05 of it."""

    metadata = {"render_modes": []}

    def __init__(self, dict_obs: bool = True, render_mode=None):
        self.dict_obs = dict_obs
        box = spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.observation_space = (spaces.Dict({"pos": box, "goal": box}) if dict_obs
                                  else spaces.Box(-2.0, 2.0, (4,), np.float32))
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        if self.dict_obs:
            return {"pos": self.pos.astype(np.float32), "goal": self.goal.astype(np.float32)}
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = self.pos + 0.1 * np.clip(action, -1, 1)
        self.t += 1
        success = bool(np.linalg.norm(self.pos - self.goal) < 0.05)
        return self._obs(), float(success), success, self.t >= HORIZON, {"is_success": success}


gymnasium.register(id="RecordReachDict-v0", entry_point=Reach, kwargs={"dict_obs": True})
gymnasium.register(id="RecordReachBox-v0", entry_point=Reach, kwargs={"dict_obs": False})


def expert(obs):
    """The scripted policy: straight at the goal."""
    return np.clip(10.0 * (obs["goal"] - obs["pos"]), -1, 1)


def box_expert(obs):
    return np.clip(10.0 * (obs[2:] - obs[:2]), -1, 1)


def sluggish(obs):
    """Succeeds only when the goal is near."""
    return np.clip(0.3 * (obs["goal"] - obs["pos"]), -1, 1)


def test_record_dict_env_writes_robomimic_layout(tmp_path):
    out = tmp_path / "demos.hdf5"
    s = record("RecordReachDict-v0", "test_record:expert", episodes=6, out=str(out), seed=3,
               trusted_modules=["test_record"], progress=None)
    assert s["episodes"] == 6 and s["successes"] == 6
    env = gymnasium.make("RecordReachDict-v0")
    with h5py.File(out, "r") as f:
        meta = json.loads(f["data"].attrs["env_args"])
        assert meta["env_name"] == "RecordReachDict-v0" and meta["type"] == 2
        assert sorted(n.decode() for n in f["mask/train"]) + sorted(n.decode() for n in f["mask/valid"]) != []
        assert len(f["mask/train"]) + len(f["mask/valid"]) == 6 and len(f["mask/valid"]) == 1
        assert len(f["mask/success"]) == 6
        total = 0
        for i in range(6):
            g = f[f"data/demo_{i}"]
            assert g.attrs["seed"] == 3 + i and bool(g.attrs["success"])
            # the same seed replays the same episode exactly: obs/next_obs by key, actions, rewards, dones
            obs, _ = env.reset(seed=3 + i)
            T = g.attrs["num_samples"]
            for t in range(T):
                for k in ("pos", "goal"):
                    assert np.array_equal(g[f"obs/{k}"][t], obs[k])
                a = expert(obs)
                np.testing.assert_allclose(g["actions"][t], a, rtol=1e-6)
                obs, r, term, trunc, _ = env.step(g["actions"][t].astype(np.float32))  # as the adapter steps
                for k in ("pos", "goal"):
                    assert np.array_equal(g[f"next_obs/{k}"][t], obs[k])
                assert g["rewards"][t] == r and g["dones"][t] == int(term or t == T - 1)
            assert term and set(g["obs"]) == {"pos", "goal"}
            assert g.attrs["return"] == pytest.approx(float(np.sum(g["rewards"][()])))
            total += T
        assert f["data"].attrs["total"] == total


def test_box_env_is_one_flat_key_and_only_success(tmp_path):
    out = tmp_path / "box.hdf5"
    record("RecordReachBox-v0", "test_record:box_expert", episodes=3, out=str(out), trusted_modules=["test_record"],
           progress=None)
    with h5py.File(out, "r") as f:
        assert set(f["data/demo_0/obs"]) == {"flat"} and f["data/demo_0/obs/flat"].shape[1] == 4
    out2 = tmp_path / "some.hdf5"
    s = record("RecordReachDict-v0", "test_record:sluggish", episodes=2, out=str(out2), only_success=True,
               trusted_modules=["test_record"], progress=None, max_tries=200)
    assert s["successes"] == 2 and s["tries"] > 2  # failed tries were dropped
    with h5py.File(out2, "r") as f:
        assert all(bool(f[f"data/{d}"].attrs["success"]) for d in f["data"])
        seeds = [int(f[f"data/{d}"].attrs["seed"]) for d in sorted(f["data"])]
    env = gymnasium.make("RecordReachDict-v0")
    for s_ in seeds:  # each kept seed is a success when replayed
        obs, _ = env.reset(seed=s_)
        for _ in range(HORIZON):
            obs, _, term, trunc, _ = env.step(sluggish(obs))
            if term or trunc:
                break
        assert term


def test_python_api_from_a_users_loop(tmp_path):
    env = gymnasium.make("RecordReachDict-v0")
    path = tmp_path / "api.hdf5"
    with Recorder(str(path), {"env_name": "RecordReachDict-v0", "type": 2, "env_kwargs": {}}) as rec:
        for seed in range(4):
            obs, info = env.reset(seed=seed)
            rec.start(obs, seed=seed)
            while True:
                action = expert(obs)
                obs, reward, terminated, truncated, info = env.step(action)
                rec.step(action, obs, reward, terminated, truncated, info)
                if terminated or truncated:
                    break
            rec.end(keep=seed != 2)
    with h5py.File(path, "r") as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1", "demo_2"]
        assert [int(f[f"data/demo_{i}"].attrs["seed"]) for i in range(3)] == [0, 1, 3]
        assert len(f["mask/success"]) == 3
    with pytest.raises(RecordError, match="exists"):
        Recorder(str(path), {"env_name": "x", "type": 2})


def test_cli_trust_and_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MODMIMIC_TRUSTED_MODULES", raising=False)
    out = tmp_path / "cli.hdf5"
    args = ["record", "env=RecordReachDict-v0", "policy=test_record:expert", "episodes=2", f"out={out}"]
    assert demos_main(args) == 2  # the policy's module is not trusted: nothing imported, nothing written
    assert "not trusted" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("MODMIMIC_TRUSTED_MODULES", "test_record")
    assert demos_main(args) == 0 and out.exists()
    before = out.read_bytes()
    assert demos_main(args) == 2 and "exists" in capsys.readouterr().err  # never replaced
    assert out.read_bytes() == before
    for bad, says in [("policy=test_record:nothing", "cannot import"), ("policy=notamodule", "module:callable"),
                      ("env=NoSuchEnv-v9", "NoSuchEnv"), ("episodes=0", "episodes")]:
        k = bad.split("=")[0]
        argv = [a if not a.startswith(k + "=") else bad for a in args]
        argv = [a if not a.startswith("out=") else f"out={tmp_path / 'x.hdf5'}" for a in argv]
        assert demos_main(argv) == 2, bad
        assert says in capsys.readouterr().err
        assert not (tmp_path / "x.hdf5").exists() and not (tmp_path / "x.hdf5.partial").exists()


def test_recorded_file_trains_and_evaluates(tmp_path, monkeypatch, tiny):
    from modmimic.eval import main as eval_main
    from modmimic.train import main as train_main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reach.hdf5"
    record("RecordReachDict-v0", "test_record:expert", episodes=20, out=str(out), trusted_modules=["test_record"],
           progress=None)
    assert train_main(["recipe=bc", f"dataset={out}", "train.output_dir=runs", "observation.modalities.obs.low_dim=[pos,goal]",
                       "train.num_epochs=3", "experiment.epoch_every_n_steps=100", "train.batch_size=32",
                       "algo.actor_layer_dims=[64,64]", "algo.optim_params.policy.learning_rate.initial=0.003",
                       "experiment.rollout.enabled=true", "experiment.rollout.n=4", f"experiment.rollout.horizon={HORIZON}",
                       "experiment.rollout.rate=100", "experiment.logging.log_tb=false", "experiment.render_video=false"]) == 0
    ckpt = next((tmp_path / "runs" / "test").iterdir()) / "models" / "last.pth"
    js = tmp_path / "eval.json"
    assert eval_main([f"checkpoint={ckpt}", "episodes=10", f"json={js}"]) == 0
    summary = json.loads(js.read_text())
    assert summary["env_name"] == "RecordReachDict-v0" and summary["Num_Episodes"] == 10
    assert summary["Success_Rate"] >= 0.5  # BC of the straight-line expert reaches most goals (7/10 measured)
