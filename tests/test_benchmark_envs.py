"""Benchmarks beyond robosuite: the gymnasium adapter's success signals and warnings, and the Meta-World v3 adapter
(benchmark goals from a seed, reset_to, scripted-expert demos, evaluation through modmimic's rollout loop). The
Meta-World tests are skipped when ``metaworld`` is not installed (``pip install --no-deps metaworld==3.1.1``)."""
import pickle
import warnings

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
from gymnasium import spaces  # noqa: E402

from modmimic.envs import EnvError, env_from_metadata  # noqa: E402
from modmimic.envs.vector import LocalEnvs  # noqa: E402
from modmimic.rollout import NoSuccessSignalWarning, run_episodes  # noqa: E402


# --- tiny gymnasium environments: a point on a line that succeeds once x >= 1 --------------------------------

class Line(gym.Env):
    """x moves by the action; each subclass reports "x >= 1" through another signal."""
    observation_space = spaces.Box(-10, 10, (1,))
    action_space = spaces.Box(-1, 1, (1,))

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.0
        return np.array([self.x], dtype=np.float32), {}

    def step(self, a):
        self.x += float(a[0])
        return np.array([self.x], dtype=np.float32), 0.0, False, False, self.info()

    def info(self):
        return {}


class IsSuccess(Line):
    def info(self):
        return {"is_success": self.x >= 1}


class Success(Line):
    def info(self):
        return {"success": float(self.x >= 1)}  # Meta-World reports 0.0 / 1.0


class CheckSuccess(Line):
    def _check_success(self):
        return self.x >= 1


class GoalReached(Line):
    def info(self):
        return {"goal_reached": self.x >= 1, "success": False}  # a misleading common key: the configured one wins


class Chatty(IsSuccess):
    def step(self, a):
        warnings.warn("the same complaint every step")
        return super().step(a)


ENVS = {"IsSuccess": IsSuccess, "Success": Success, "CheckSuccess": CheckSuccess, "GoalReached": GoalReached,
        "Silent": Line, "Chatty": Chatty}
for _name, _cls in ENVS.items():
    gym.register(f"ModmimicLine{_name}-v0", entry_point=_cls)


def line_meta(name: str, **extra) -> dict:
    return {"env_name": f"ModmimicLine{name}-v0", "type": 2, "env_version": "1", "env_kwargs": {}, **extra}


def solved(env_info, info) -> bool:
    """A success callable named by a dataset's env_args (``success: {fn: <this module>.solved}``)."""
    return env_info.x >= 1


def play(env, actions) -> list:
    env.reset(seed=0)
    return [(env.step(np.array([a]))[0], env.is_success()["task"])[1] for a in actions]


@pytest.mark.parametrize("name, signal", [("IsSuccess", "info['is_success']"), ("Success", "info['success']"),
                                          ("CheckSuccess", "_check_success()")])
def test_gymnasium_adapter_recognises_the_common_success_signals(name, signal):
    env = env_from_metadata(line_meta(name))
    assert env.success_signal is None
    assert play(env, [0.5, 0.4, 0.2, -0.5]) == [False, False, True, False]
    assert env.success_signal == signal
    env.reset(seed=0)
    assert env.is_success() == {"task": False}
    env.close()


def test_gymnasium_adapter_takes_a_configured_info_key_or_callable(monkeypatch):
    env = env_from_metadata(line_meta("GoalReached", success="goal_reached"))
    assert play(env, [0.6, 0.6]) == [False, True] and env.success_signal == "info['goal_reached']"
    assert env.serialize()["success"] == {"info_key": "goal_reached"}  # rollout datasets and checkpoints keep it
    assert play(env_from_metadata(line_meta("GoalReached")), [0.6, 0.6]) == [False, False]  # info["success"]
    with pytest.raises(EnvError, match="names info key 'reached', which the step's info does not have"):
        play(env_from_metadata(line_meta("GoalReached", success={"info_key": "reached"})), [0.1])
    with pytest.raises(EnvError, match="'success' must be an info key"):
        env_from_metadata(line_meta("Silent", success={"key": "x"}))

    fn = f"{__name__}.solved"
    monkeypatch.delenv("MODMIMIC_TRUSTED_MODULES", raising=False)
    with pytest.raises(EnvError, match="outside the trusted modules"):  # env_args come from files: data, not code
        env_from_metadata(line_meta("Silent", success={"fn": fn}))
    monkeypatch.setenv("MODMIMIC_TRUSTED_MODULES", __name__)
    env = env_from_metadata(line_meta("Silent", success={"fn": fn}))
    assert play(env, [0.6, 0.6]) == [False, True] and env.success_signal == f"{fn}(env, info)"


class LineController:
    """A policy for the rollout loop (the interface of :class:`modmimic.policy.RolloutPolicy` that run_episodes
    uses): action ``step`` on the ``flat`` key."""

    def __init__(self, step: float, obs_key: str = "flat", obs_dim: int = 1, ac_dim: int = 1, act=None):
        self.policy = type("Algo", (), {"obs_shapes": {obs_key: (obs_dim,)}, "goal_shapes": {}, "ac_dim": ac_dim})()
        self.action_dim = ac_dim
        self.step, self.act, self.obs_key = step, act, obs_key

    def start_episode(self, n):
        pass

    def reset_envs(self, mask):
        pass

    def __call__(self, batch, batched_ob=True):
        if self.act is not None:
            return np.stack([self.act(o) for o in batch[self.obs_key]])
        return np.full((len(batch[self.obs_key]), self.action_dim), self.step)


def test_rollouts_warn_once_when_an_env_never_reports_success():
    with LocalEnvs([env_from_metadata(line_meta("Silent"))]) as envs:
        with pytest.warns(NoSuccessSignalWarning, match="'ModmimicLineSilent-v0' reports no success signal"):
            eps = run_episodes(LineController(0.5), envs, n=2, horizon=4)
        assert [e.success for e in eps] == [False, False]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per environment and process: no second warning
            run_episodes(LineController(0.5), envs, n=1, horizon=2)
    with LocalEnvs([env_from_metadata(line_meta("Success"))]) as envs, warnings.catch_warnings():
        warnings.simplefilter("error")  # a signal, no warning
        assert [e.success for e in run_episodes(LineController(0.5), envs, n=2, horizon=4)] == [True, True]


def test_environment_warnings_are_shown_once_and_counted(capfd):
    env = env_from_metadata(line_meta("Chatty"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes as a Python warning (nor the passive env checker's)
        play(env, [0.1] * 5)
    err = capfd.readouterr().err
    assert err.count("the same complaint every step") == 1 and "ModmimicLineChatty-v0 warned" in err
    env.close()


# --- Meta-World -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def metaworld():
    import modmimic.envs.metaworld_env  # noqa: F401 - first: it picks MuJoCo's headless GL (EGL) before mujoco loads

    return pytest.importorskip("metaworld")


def mw_meta(task, **kw):
    from modmimic.envs.metaworld_env import env_meta

    return env_meta(task, **kw)


def test_metaworld_resets_are_the_benchmarks_goals_reproducibly(metaworld):
    env = env_from_metadata(mw_meta("reach-v3"))
    other = env_from_metadata(mw_meta("reach-v3"))  # another instance (another process would do the same)
    first = [env.reset(seed=s)["flat"] for s in range(50)]
    assert all(np.array_equal(first[s], other.reset(seed=s + 100 * 50)["flat"]) for s in (0, 7, 49))
    goals = np.array([o[-3:] for o in first])
    assert len(np.unique(goals.round(6), axis=0)) == 50  # 50 seeds cover the benchmark's 50 goals
    # exactly Meta-World's own MT1(seed=0) placements, as its set_task + reset give them
    bench = metaworld.MT1("reach-v3", seed=0)
    ref = bench.train_classes["reach-v3"]()
    for s in (0, 13, 49):
        ref.set_task(bench.train_tasks[s])
        obs, _ = ref.reset()
        np.testing.assert_array_equal(obs, first[s])
        assert np.array_equal(env.reset(seed=s)["flat"], obs)
    # another benchmark seed, other goals; random goals: reproducible from the seed, not the benchmark's
    assert not np.array_equal(env_from_metadata(mw_meta("reach-v3", seed=1)).reset(seed=0)["flat"], first[0])
    rnd = env_from_metadata(mw_meta("reach-v3", goals="random"))
    a, b = rnd.reset(seed=3)["flat"], rnd.reset(seed=4)["flat"]
    assert np.array_equal(rnd.reset(seed=3)["flat"], a) and not np.array_equal(a, b)
    assert not any(np.allclose(a[-3:], g) for g in goals)
    for e in (env, other, rnd, ref):
        e.close()


def test_metaworld_steps_success_and_reset_to(metaworld):
    from modmimic.demos import MetaWorldExpert

    env = env_from_metadata(mw_meta("push-v3", max_episode_steps=150))
    obs = env.reset(seed=5)
    assert set(obs) == {"flat"} and obs["flat"].shape == (39,) and env.action_dimension == 4
    expert = MetaWorldExpert()
    expert.reset(env, obs)
    states, seen, success = [], [], False
    for t in range(150):
        states.append(env.get_state())
        seen.append(obs["flat"])
        obs, r, done, info = env.step(expert.act(obs))
        assert env.is_success()["task"] == bool(info["success"])
        success = success or bool(info["success"])
        if success:
            break
    assert success and t < 149
    env.reset(seed=11)
    for t in (0, 10, len(states) - 1):  # a recorded state gives back its observation exactly
        np.testing.assert_array_equal(env.reset_to(states[t])["flat"], seen[t])
    with pytest.raises(EnvError, match="state has 5 entries"):
        env.reset_to({"states": np.zeros(5)})
    with pytest.raises(EnvError, match="unknown env_kwargs \\['camera'\\]"):
        env_from_metadata(mw_meta("push-v3", camera="corner"))
    with pytest.raises(EnvError, match="did you mean 'push-v3'"):
        env_from_metadata(mw_meta("psh-v3"))
    env.close()


def test_metaworld_expert_demos_load_as_a_modmimic_dataset(metaworld, tmp_path):
    import h5py

    from modmimic.data.hdf5 import load_episode_store, read_env_meta
    from modmimic.demos import generate

    path = str(tmp_path / "reach.hdf5")
    s = generate("reach-v3", 6, path, seed=20, progress=None)
    assert s["expert_success_rate"] == 1.0
    meta = read_env_meta(path)
    assert meta["env_name"] == "Meta-World/reach-v3" and meta["env_kwargs"]["goals"] == "benchmark"
    with h5py.File(path) as f:
        assert [int(f[f"data/demo_{i}"].attrs["seed"]) for i in range(6)] == list(range(20, 26))
        assert sorted(f["mask/train"][:].tolist() + f["mask/valid"][:].tolist()) == [f"demo_{i}".encode()
                                                                                     for i in range(6)]
        demo = f["data/demo_2"]
        states, obs0 = demo["states"][:], demo["obs/flat"][0]
        assert demo["rewards"].shape == demo["dones"].shape == (len(demo["actions"]),) and demo["dones"][-1] == 1
        assert np.abs(demo["actions"][:]).max() <= 1.0
    store = load_episode_store(path, ["flat"], filter_key="train")
    assert store.obs_shapes() == {"flat": (39,)} and store.ac_dim == 4 and len(store.demos) == 5
    # the demo's start is reproducible: from its state, and from its seed with random goals (how it was drawn)
    env = env_from_metadata({**meta, "env_kwargs": {**meta["env_kwargs"], "goals": "random"}})
    np.testing.assert_allclose(env.reset(seed=22)["flat"], obs0, rtol=1e-6)
    np.testing.assert_allclose(env.reset_to({"states": states[0]})["flat"], obs0, rtol=1e-6)
    env.close()


def independent_success(task: str, seeds) -> list:
    """Meta-World's own loop (no modmimic): MT1(task, seed=0), the seed's benchmark goal, its scripted policy,
    success from info["success"] within 200 steps."""
    import metaworld
    from metaworld.policies import ENV_POLICY_MAP

    bench = metaworld.MT1(task, seed=0)
    env = bench.train_classes[task]()
    out = []
    for s in seeds:
        env.set_task(bench.train_tasks[s % 50])
        obs, _ = env.reset()
        policy, ok = ENV_POLICY_MAP[task](), False
        for _ in range(200):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = np.clip(policy.get_action(obs), -1, 1)
            obs, _, _, _, info = env.step(a)
            if info["success"]:
                ok = True
                break
        out.append(ok)
    env.close()
    return out


def test_modmimic_rollouts_report_the_success_metaworld_reports(metaworld):
    """The expert's own policy evaluated by modmimic's rollout loop (the loop of modmimic.eval and of training
    rollouts) succeeds exactly where Meta-World's own loop says it does, on the same seeds."""
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP["pick-place-v3"]()

    def act(o):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.clip(policy.get_action(o), -1, 1)

    seeds = list(range(100, 112))
    with LocalEnvs.from_metadata(mw_meta("pick-place-v3")) as envs, warnings.catch_warnings():
        warnings.simplefilter("error", NoSuccessSignalWarning)
        eps = run_episodes(LineController(0, obs_dim=39, ac_dim=4, act=act), envs, n=len(seeds), horizon=200,
                           seed=seeds[0])
    ours = [e.success for e in eps]
    assert sum(ours) >= 10 and ours == independent_success("pick-place-v3", seeds)


def test_metaworld_task_sets(metaworld):
    env = env_from_metadata(mw_meta("MT10"))
    assert len(env.names) == 10 and env.names[0] == "reach-v3"
    for s in (0, 3, 13):
        obs = env.reset(seed=s)
        assert env.names[env.index] == env.names[s % 10] and env.goal_index == s // 10
        np.testing.assert_array_equal(obs["task_id"], np.eye(10)[s % 10])
    st = env.get_state()
    obs = env.step(np.zeros(4))[0]
    env.reset(seed=0)
    back = env.reset_to(st)
    assert env.names[env.index] == env.names[3] and np.array_equal(back["task_id"], np.eye(10)[3])
    task = env.tasks[env.names[3]][1]
    assert np.array_equal(env.env._last_rand_vec, pickle.loads(task.data)["rand_vec"])
    assert obs["flat"].shape == (39,)
    env.close()


@pytest.mark.slow
def test_bc_rnn_fast_learns_metaworld_reach(metaworld, tmp_path):
    """BC-RNN ``preset=fast`` on 50 scripted reach-v3 demos: modmimic.eval reports >= 0.8 on 50 benchmark goals."""
    import glob

    from modmimic.demos import generate
    from modmimic.eval import evaluate
    from modmimic.train import main as train_main

    data = str(tmp_path / "reach.hdf5")
    generate("reach-v3", 50, data, seed=0, progress=None)
    rc = train_main(["recipe=bc_rnn", "preset=fast", f"dataset={data}", "observation.modalities.obs.low_dim=[flat]",
                     "experiment.rollout.enabled=false", f"train.output_dir={tmp_path / 'runs'}"])
    assert rc == 0
    ckpt = sorted(glob.glob(str(tmp_path / "runs" / "**" / "last.pth"), recursive=True))[-1]
    s = evaluate(ckpt, episodes=50, horizon=200)
    print(f"reach-v3 BC-RNN fast: {s['Num_Success']}/{s['Num_Episodes']}")
    assert s["Success_Rate"] >= 0.8, s["Success_Rate"]


def test_eval_applies_the_checkpoints_env_meta_update_dict(metaworld, tmp_path):
    """``experiment.env_meta_update_dict`` (e.g. a success key, a shorter episode) reaches modmimic.eval as it
    reaches training rollouts: robomimic's checkpoints store the updated metadata."""
    from modmimic.algo import algo_factory
    from modmimic.config import compose
    from modmimic.eval import evaluate
    from modmimic.policy import make_checkpoint, save_checkpoint

    cfg = compose("bc", ["observation.modalities.obs.low_dim=[flat]", "algo.actor_layer_dims=[16]",
                         "+experiment.env_meta_update_dict.env_kwargs={max_episode_steps: 7}"])
    algo = algo_factory(cfg.algo_name, cfg, {"flat": (39,)}, 4)
    path = save_checkpoint(str(tmp_path / "c.pth"), make_checkpoint(algo, env_meta=mw_meta("reach-v3")))
    s = evaluate(path or str(tmp_path / "c.pth"), episodes=2, horizon=50)
    assert [e["length"] for e in s["episodes"]] == [7, 7]


def test_metaworld_camera_observations(metaworld):
    env = env_from_metadata(mw_meta("reach-v3", camera_names=["corner"], camera_heights=48, camera_widths=64),
                            use_image_obs=True)
    obs = env.reset(seed=0)
    img = obs["corner_image"]
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.std() > 10
    assert np.array_equal(env.step(np.zeros(4))[0]["corner_image"].shape, (48, 64, 3))
    assert np.array_equal(env.render(48, 64, "corner"), env.render(48, 64, "corner"))
    env.close()
