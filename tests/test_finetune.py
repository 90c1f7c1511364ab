"""Offline-to-online fine-tuning (``python -m modmimic.finetune``, :mod:`modmimic.online`) on the PointReach
environment, and policies as torchrl TensorDict modules (``modmimic.policy.as_tensordict_module``)."""
import functools
import os

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from modmimic.config import compose
from modmimic.data.synthetic import make_reach_dataset
from modmimic.trainer import train

KEYS = ["pos", "goal_pos", "vel"]


def small_overrides(data, out, epochs):
    """64-unit networks on the reach data, 100 steps an epoch, one evaluation (50 episodes) at the end."""
    return [f"train.data={data}", f"train.output_dir={out}", f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]",
            "algo.actor.layer_dims=[64,64]", "algo.critic.layer_dims=[64,64]", "train.batch_size=64",
            f"train.num_epochs={epochs}", "experiment.epoch_every_n_steps=100", "experiment.rollout.n=50",
            "experiment.rollout.horizon=40", f"experiment.rollout.rate={epochs}", "train.hdf5_normalize_obs=true",
            "experiment.render_video=false", "experiment.logging.log_tb=false"]


def iql_overrides(data, out, epochs):
    """A small IQL with the fast preset's settings."""
    return small_overrides(data, out, epochs) + [
        "algo.adv.beta=0.1", "algo.target_tau=0.005", "algo.optim_params.actor.learning_rate.initial=1e-3",
        "algo.optim_params.critic.learning_rate.initial=3e-4", "algo.optim_params.vf.learning_rate.initial=3e-4"]


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    """A weak offline IQL policy: 100 steps on 30 noisy demos (noise 0.8 on the expert's actions)."""
    d = tmp_path_factory.mktemp("ft")
    data = str(d / "reach.hdf5")
    make_reach_dataset(data, n_demos=30, dim=2, seed=0, max_len=40, valid_fraction=0.1, noise=0.8)
    r = train(compose("iql", iql_overrides(data, d / "runs", 1)), progress=False)
    return {"data": data, "ckpt": os.path.join(r["run_dir"], "models", "last.pth"), "dir": d,
            "success": r["metrics"]["Rollout/Success_Rate/PointReach"]}


def finetune_cfg(ckpt, *overrides):
    from modmimic.finetune import finetune_config

    return finetune_config([f"checkpoint={ckpt}", *overrides])


def test_finetuning_improves_a_weak_offline_policy(weak):
    """1 000 environment steps (one gradient step each, half of every batch online) lift the success rate of a weak
    offline IQL policy on the same 50 evaluation episodes (seeded, train.seed 1): measured 0.04 -> 0.64. Other seeds
    gain less at this budget, and continuing on the offline rows alone does about as well on this toy
    (docs/learning.md, "Offline-to-online fine-tuning")."""
    assert weak["success"] <= 0.2
    r = train(finetune_cfg(weak["ckpt"], "online.env_steps=1000", "experiment.rollout.rate=10"), progress=False)
    m = r["metrics"]
    assert r["epoch"] == 10 and m["Online/Env_Steps"] == 1000
    assert m["Online/Episodes"] >= 20 and m["Online/Buffer_Size"] > 500
    assert m["Online/Env_Steps_per_Second"] > 0
    assert m["Rollout/Success_Rate/PointReach"] >= weak["success"] + 0.3, (weak["success"], m)


def _state(path):
    from modmimic.policy import load_checkpoint

    ck = load_checkpoint(path)
    return ck["model"], ck["trainer_state"]["samplers"]["train"], ck["variable_state"]


def _equal(a, b, where=""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b or (isinstance(a, float) and where.endswith(("env_seconds",))), (where, a, b)


@pytest.mark.parametrize("explore", ["sampled", "fixed_noise"])
def test_resume_equals_uninterrupted_run(weak, tmp_path, explore):
    """Stopped after epoch 2 of 4 (an episode under way) and resumed: networks, optimizers, the replay buffer's rows,
    its sampling generator and the counters equal those of the run that was never stopped; with the actor's samples
    and with fixed exploration noise (``online.explore_std``, drawn from the sampler's generator)."""
    from modmimic import finetune

    common = [f"checkpoint={weak['ckpt']}", "online.env_steps=200", "online.env_steps_per_update=2",
              "experiment.epoch_every_n_steps=25", "experiment.rollout.enabled=false", "experiment.render_video=false",
              *(["online.explore_std=0.1"] if explore == "fixed_noise" else [])]
    assert finetune.main(common + [f"train.output_dir={tmp_path / 'a'}"]) == 0
    assert finetune.main(common + [f"train.output_dir={tmp_path / 'b'}", "train.stop_after_epoch=2"]) == 0
    (run_a,) = [os.path.join(r, d) for r, ds, _ in os.walk(tmp_path / "a") for d in ds if d.isdigit()]
    (run_b,) = [os.path.join(r, d) for r, ds, _ in os.walk(tmp_path / "b") for d in ds if d.isdigit()]
    _, mid, vs = _state(os.path.join(run_b, "models", "last.pth"))
    assert vs["epoch"] == 2 and mid["counters"]["env_steps"] == 100
    assert sum(len(a) for a in mid["env"]["slot_actions"]) > 0  # the environment is mid-episode: replayed on resume
    assert finetune.main([f"resume_dir={run_b}", "train.stop_after_epoch=null"]) == 0
    model_a, online_a, vs_a = _state(os.path.join(run_a, "models", "last.pth"))
    model_b, online_b, vs_b = _state(os.path.join(run_b, "models", "last.pth"))
    assert vs_a["epoch"] == vs_b["epoch"] == 4 and online_a["counters"]["env_steps"] == 200
    assert online_a["buffer_len"] > 100
    _equal(online_a, online_b, "online")
    _equal(model_a, model_b, "model")


def test_bad_input_is_one_line_exit_2(weak, tmp_path, capsys):
    from modmimic import finetune

    bc = train(compose("bc", [f"train.data={weak['data']}", f"train.output_dir={tmp_path}", "train.num_epochs=1",
                              "experiment.epoch_every_n_steps=2", "experiment.rollout.enabled=false",
                              f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]"]), progress=False)
    cases = [([f"checkpoint={os.path.join(bc['run_dir'], 'models', 'last.pth')}"], "not an offline-RL one"),
             ([f"checkpoint={weak['ckpt']}", "online.env_stepz=5"], "online.env_stepz"),
             ([f"checkpoint={weak['ckpt']}", "online.ratio=1.5"], "online.ratio"),
             ([f"checkpoint={weak['ckpt']}", "online.explore_std=-0.1"], "online.explore_std"),
             ([f"checkpoint={weak['ckpt']}", "online.offline_rows=[actr]"], "update 'actr'"),
             ([f"checkpoint={weak['ckpt']}", "online.offline_rows=[actor]", "online.ratio=1"], "would have no rows"),
             ([f"checkpoint={weak['ckpt']}", "online.offline_rows=[vf]"], "writes into the batch"),  # V for the actor
             ([f"checkpoint={weak['ckpt']}", "online.online_rows=[actor]", "online.ratio=0"], "would have no rows"),
             ([f"checkpoint={weak['ckpt']}", "online.online_rows=[actor]", "online.ratio=0.001"], "0 of 64 rows"),
             ([f"checkpoint={weak['ckpt']}", "online.online_rows=[actor]", "online.offline_rows=[actor]"],
              "both name update 'actor'"),
             ([f"checkpoint={weak['ckpt']}", "train.seq_length=3"], "train.seq_length"),
             ([f"checkpoint={tmp_path / 'none.pth'}"], "checkpoint not found"),
             (["online.env_steps=5"], "checkpoint=<path.pth> is required"),
             ([f"checkpoint={weak['ckpt']}", f"dataset={tmp_path / 'gone.hdf5'}"], "gone.hdf5")]
    for argv, text in cases:
        capsys.readouterr()
        assert finetune.main(argv + [f"train.output_dir={tmp_path / 'x'}"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert text in err and len(err.splitlines()) == 1, (argv, err)
    assert not os.path.exists(tmp_path / "x")


# --- torchrl --------------------------------------------------------------------------------------------------------

def test_vector_envs_as_a_torchrl_env(weak):
    """The PointReach environments as a torchrl env: specs hold (torchrl's check_env_specs), ``env.rollout`` with the
    checkpoint's policy gives the actions RolloutPolicy gives, and episodes start from seed + episode number."""
    from torchrl.envs.utils import check_env_specs

    from modmimic.envs.vector import LocalEnvs
    from modmimic.online import TorchRLEnv
    from modmimic.policy import as_tensordict_module, policy_from_checkpoint

    meta = {"env_name": "PointReach", "type": 2, "env_kwargs": {"dim": 2, "max_len": 40}}
    env = TorchRLEnv(LocalEnvs.from_metadata(meta, 2), {"pos": (2,), "goal_pos": (2,), "vel": (2,)}, 2, horizon=40,
                     seed=7)
    check_env_specs(env)
    policy = as_tensordict_module(weak["ckpt"])
    td = env.rollout(40, policy, break_when_any_done=False, break_when_all_done=True)
    assert td.batch_size[0] == 2 and td.get(("next", "done")).any(1).all()
    rp, _ = policy_from_checkpoint(ckpt_path=weak["ckpt"])
    obs = {k: td.get(("observation", k))[:, 0].numpy() for k in KEYS}
    assert np.array_equal(td.get("action")[:, 0].numpy(), rp(obs, batched_ob=True))
    from modmimic.envs.point_reach import PointReachEnv

    ref = PointReachEnv(meta)
    first = td.get(("observation", "goal_pos"))[:, 0].numpy()
    episodes = td.get("episode")[:, 0].tolist()
    for j, e in enumerate(episodes):
        assert np.allclose(ref.reset(seed=7 + e)["goal_pos"], first[j])
    env.close()


def test_tensordict_module_on_gymnasium_env(tmp_path):
    """A BC policy trained on the reach demos, as a TensorDict module, rolled out by torchrl's GymEnv on PointReach
    registered with gymnasium: every action equals RolloutPolicy's for the same observation, and it reaches goals."""
    pytest.importorskip("gymnasium")
    from torchrl.envs import GymEnv

    from modmimic.envs.point_reach import register_gymnasium
    from modmimic.policy import as_tensordict_module, policy_from_checkpoint

    data = str(tmp_path / "reach.hdf5")
    make_reach_dataset(data, n_demos=40, dim=2, seed=0, max_len=40)
    r = train(compose("bc", [f"train.data={data}", f"train.output_dir={tmp_path}", "train.num_epochs=3",
                             "experiment.epoch_every_n_steps=100", "experiment.rollout.enabled=false",
                             "algo.actor_layer_dims=[64,64]", "algo.optim_params.policy.learning_rate.initial=1e-3",
                             "train.batch_size=64", "experiment.logging.log_tb=false",
                             f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]"]), progress=False)
    ckpt = os.path.join(r["run_dir"], "models", "last.pth")
    env = GymEnv(register_gymnasium())
    policy = as_tensordict_module(ckpt, in_keys={k: k for k in KEYS})
    rp, _ = policy_from_checkpoint(ckpt_path=ckpt)
    successes = 0
    for seed in range(5):
        env.set_seed(seed)
        td = env.rollout(40, policy)
        for t in range(td.batch_size[0]):
            assert np.array_equal(td["action"][t].numpy(), rp({k: td[k][t].numpy() for k in KEYS}))
        successes += int(td.get(("next", "terminated")).any())
    assert successes >= 4
    with pytest.raises(KeyError, match="position"):
        as_tensordict_module(ckpt, in_keys={"position": "pos"})


def test_episode_rows_closed_form():
    """An episode's transitions: ``("next", "done")`` is termination only (a time limit bootstraps), ``is_init`` the
    first step, ``mc_return`` the discounted return-to-go (0 after the last step)."""
    from modmimic.online import episode_rows

    def step(t, r, term):
        return TensorDict({"observation": {"pos": torch.full((2,), float(t))}, "action": torch.full((2,), 0.5),
                           "episode": torch.tensor(3),
                           "next": {"observation": {"pos": torch.full((2,), t + 1.0)}, "reward": torch.tensor([r]),
                                    "terminated": torch.tensor([term]), "success": torch.tensor([term])}}, [])

    g = 0.9
    ended = episode_rows([step(0, 0.0, False), step(1, 0.0, False), step(2, 1.0, True)], g)
    assert torch.allclose(ended["mc_return"].squeeze(-1), torch.tensor([g * g, g, 1.0]))
    assert ended[("next", "done")].squeeze(-1).tolist() == [False, False, True]
    assert ended["is_init"].tolist() == [True, False, False]
    assert torch.equal(ended[("next", "observation", "pos")][:, 0], torch.tensor([1.0, 2.0, 3.0]))
    cut = episode_rows([step(0, 0.0, False), step(1, 1.0, False), step(2, 0.0, False)], g)  # truncated: no done
    assert torch.allclose(cut["mc_return"].squeeze(-1), torch.tensor([g, 1.0, 0.0]))
    assert not cut[("next", "done")].any()


def test_cal_ql_fine_tunes_with_online_returns(weak, tmp_path):
    """Cal-QL (its penalty's lower bound reads mc_return) fine-tunes: online rows carry the episodes' returns."""
    from modmimic.policy import load_checkpoint

    off = train(compose("cal_ql", small_overrides(weak["data"], tmp_path / "off", 1) + [
        "experiment.epoch_every_n_steps=10", "experiment.rollout.enabled=false"]), progress=False)
    r = train(finetune_cfg(os.path.join(off["run_dir"], "models", "last.pth"), "online.env_steps=60",
                           "experiment.epoch_every_n_steps=30", "train.num_epochs=2"), progress=False)
    assert r["metrics"]["Online/Env_Steps"] == 60 and np.isfinite(r["metrics"]["Train/Loss"])
    rows = load_checkpoint(os.path.join(r["run_dir"], "models", "last.pth"))["trainer_state"]["samplers"]["train"]
    ret, rew = rows["buffer_rows"]["mc_return"].squeeze(-1), rows["buffer_rows"]["next"]["reward"].squeeze(-1)
    assert len(ret) >= 40 and (ret >= rew).all()


def test_reward_semantics_warning_when_data_successes_are_not_terminal():
    """Demos rewarded on several steps after their first success (robomimic's and ``modmimic.demos``' layout) with
    online episodes that end at their first: a warning naming ``batch.terminal_reward``; none once it is set, none
    when online episodes run on after a success, none for data rewarded once per demo."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from modmimic import keys as K
    from modmimic.online import reward_semantics_note, rewarded_after_success

    # demos of 3, 4 and 2 steps: rewarded once at the end, on their last 3 steps, never
    r = torch.tensor([0, 0, 1, 0, 1, 1, 1, 0, 0.0]).unsqueeze(-1)
    store = SimpleNamespace(columns={K.REWARD: (0, 1, (1,))}, flat=r, offsets=torch.tensor([0, 3, 7]),
                            lengths=torch.tensor([3, 4, 2]))
    assert rewarded_after_success(store) == 1
    assert rewarded_after_success(SimpleNamespace(columns={}, flat=r)) == 0
    cfg = OmegaConf.create({"experiment": {"rollout": {"terminate_on_success": True}}, "batch": {"n_step": 1}})
    assert "+batch.terminal_reward" in reward_semantics_note(cfg, 1)
    assert reward_semantics_note(cfg, 0) is None
    cfg.batch.terminal_reward = 1.0
    assert reward_semantics_note(cfg, 1) is None
    cfg = OmegaConf.create({"experiment": {"rollout": {"terminate_on_success": False}}, "batch": {}})
    assert reward_semantics_note(cfg, 1) is None


def test_a_plus_override_adds_a_key_the_stored_config_lacks(weak):
    """``+key=value`` adds a key to the checkpoint's config (hydra's syntax), e.g. a success-terminal batch or a
    minimum actor std; without ``+`` an unknown key is still an error naming the closest one."""
    from modmimic.config import ConfigError

    cfg = finetune_cfg(weak["ckpt"], "+batch.terminal_reward=1.0", "+algo.actor.net.gaussian.min_std=0.1")
    assert cfg.batch.terminal_reward == 1.0 and cfg.algo.actor.net.gaussian.min_std == 0.1
    with pytest.raises(ConfigError, match="unknown config key 'batch.terminal_rewrd'"):
        finetune_cfg(weak["ckpt"], "batch.terminal_rewrd=1.0")


def test_fine_tuning_warns_about_non_terminal_data_successes(weak, tmp_path):
    """The warning reaches a real fine-tuning run: the reach demos end at their first success (no warning); the same
    demos with their success reward repeated on the two steps before it (robomimic's layout) warn once at start-up,
    and ``+batch.terminal_reward=1.0`` silences it again."""
    import shutil
    import warnings

    import h5py

    data = str(tmp_path / "rewarded_after_success.hdf5")
    shutil.copy(weak["data"], data)
    with h5py.File(data, "r+") as f:
        for d in f["data"].values():
            d["rewards"][-3:] = 1.0

    def warned(*overrides):
        cfg = finetune_cfg(weak["ckpt"], f"train.output_dir={tmp_path / 'runs'}", "online.env_steps=10",
                           "experiment.epoch_every_n_steps=10", "experiment.rollout.enabled=false", *overrides)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            train(cfg, progress=False)
        return [str(x.message) for x in w if "terminal_reward" in str(x.message)]

    assert warned() == []
    (msg,) = warned(f"train.data={data}")
    assert msg.startswith("30 demos are rewarded on several steps after their first success")
    assert warned(f"train.data={data}", "+batch.terminal_reward=1.0") == []


def test_fixed_exploration_noise_is_added_to_the_evaluation_action(weak, tmp_path):
    """``online.explore_std=s``: every online action is the actor's evaluation action plus N(0, s^2) per dimension
    (clipped to the data's action range), not a sample of the actor's own distribution. With the actor frozen
    (lr 0), s = 0 stores the evaluation actions (to float rounding); s = 0.05 stores them plus noise whose
    per-dimension std is 0.05 within 10 % and whose mean is 0 within 4 standard errors."""
    from modmimic import finetune
    from modmimic.policy import load_checkpoint, policy_from_checkpoint

    rp, _ = policy_from_checkpoint(ckpt_path=weak["ckpt"])

    def online_rows(std, out):
        argv = [f"checkpoint={weak['ckpt']}", "online.env_steps=600", "experiment.epoch_every_n_steps=100",
                "experiment.rollout.enabled=false", "experiment.render_video=false", f"online.explore_std={std}",
                "algo.optim_params.actor.learning_rate.initial=0.0", f"train.output_dir={out}"]
        assert finetune.main(argv) == 0
        (run,) = [os.path.join(r, d) for r, ds, _ in os.walk(out) for d in ds if d.isdigit()]
        rows = load_checkpoint(os.path.join(run, "models", "last.pth"))["trainer_state"]["samplers"]["train"]
        rows = rows["buffer_rows"]
        obs = {k: rows["observation"][k].numpy() for k in KEYS}
        return rows["action"].numpy(), rp(obs, batched_ob=True)

    import h5py

    with h5py.File(weak["data"], "r") as f:
        data = np.concatenate([f["data"][d]["actions"][:] for d in f["data"]])
    lo, hi = data.min(0), data.max(0)
    taken, evaluation = online_rows(0, tmp_path / "a")
    assert len(taken) >= 500 and np.allclose(taken, np.clip(evaluation, lo, hi), rtol=0, atol=1e-6)
    taken, evaluation = online_rows(0.05, tmp_path / "b")
    inside = ((evaluation > lo + 0.25) & (evaluation < hi - 0.25)).all(1)  # 5 std from the clipping range
    noise = (taken - evaluation)[inside]
    assert len(noise) >= 300
    assert np.allclose(noise.std(0), 0.05, rtol=0.1), noise.std(0)
    assert np.all(np.abs(noise.mean(0)) < 4 * 0.05 / np.sqrt(len(noise))), noise.mean(0)


@pytest.mark.parametrize("source", ["offline", "online"])
def test_rows_setting_trains_the_actor_on_one_half(weak, tmp_path, monkeypatch, source):
    """``online.offline_rows=[actor]`` (``online.online_rows=[actor]``): every actor update of the fine-tuning run
    sees the batch's offline (online) rows only, half of 64 once the buffer holds an episode, while the critic's and
    value's updates see all 64."""
    from modmimic import program

    seen, real = [], program.source_rows

    def spy(part, asked):
        out = real(part, asked)
        from_data = out.get("index") >= 0
        ok = asked == source and bool((from_data == (asked == "offline")).all())
        seen.append((part.batch_size[0], out.batch_size[0], ok))
        return out

    monkeypatch.setattr(program, "source_rows", spy)
    cfg = finetune_cfg(weak["ckpt"], "online.env_steps=200", "experiment.epoch_every_n_steps=50",
                       "experiment.rollout.enabled=false", f"online.{source}_rows=[actor]",
                       f"train.output_dir={tmp_path}")
    train(cfg, progress=False)
    assert len(seen) == 200 and all(ok for _, _, ok in seen)
    mixed = [(n, k) for n, k, _ in seen if k < n]
    assert len(mixed) > 100 and all(n == 64 and k == 32 for n, k in mixed)


def test_monte_carlo_advantage_reaches_the_actor_on_both_halves(weak, monkeypatch):
    """``+batch.mc_return_key=mc_return +losses.actor.q_key=mc_return``: IQL's actor weighs each row by
    ``exp((G - V(s)) / beta)`` with ``G`` the Monte-Carlo return-to-go, of the data's demos (computed at load, ending
    where ``batch.terminal_reward`` ends them) and of the online episodes (the replay buffer's rows); the run
    improves the weak policy as the Q-advantage run does (docs/learning.md: on mixed-quality Lift this setting is
    the one that climbs)."""
    from modmimic import keys as K
    from modmimic.components.losses import iql

    seen, real = [], iql.awr_actor

    @functools.wraps(real)  # keeps the loss's declared keys
    def spy(batch, policy, **kw):
        assert kw["q_key"] == K.MC_RETURN
        idx = batch.get(K.INDEX).reshape(batch.batch_size[0], -1)[:, 0]
        g = batch.get(K.MC_RETURN)
        seen.append((int((idx < 0).sum()), bool(((g >= 0) & (g <= 1 + 1e-6)).all())))
        return real(batch, policy, **kw)

    monkeypatch.setattr(iql, "awr_actor", spy)
    r = train(finetune_cfg(weak["ckpt"], "online.env_steps=1000", "experiment.rollout.rate=10",
                           "+batch.terminal_reward=1.0", "+batch.mc_return_key=mc_return",
                           "+losses.actor.q_key=mc_return"), progress=False)
    assert len(seen) == 1000 and all(ok for _, ok in seen)  # returns of a 0/1 success reward, success terminal
    assert sum(n == 32 for n, _ in seen) > 900  # half of each batch online once the buffer holds an episode
    assert r["metrics"]["Rollout/Success_Rate/PointReach"] >= weak["success"] + 0.3
