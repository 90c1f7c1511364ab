"""Diffusion Policy: noise schedule math against closed forms, EMA schedule, denoiser networks, the recipe through the
Algo API (checkpoint with EMA weights, explain), and the shared chunked acting path (order, re-planning, per-env
independence and resets, temporal ensembling)."""
import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from conftest import build_from_reach, checkpoint_round_trip
from modmimic import keys as K
from modmimic.algo import algo_factory
from modmimic.components.acting import Chunked, Context
from modmimic.components.nets.diffusion import ConditionalUnet1D, TransformerDenoiser
from modmimic.components.nets.diffusion_schedule import (NoiseSchedule, alphas_cumprod_for, betas_for,
                                                         ddpm_posterior, inference_timesteps, q_sample)
from modmimic.config import ConfigError, compose
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler
from modmimic.policy import RolloutPolicy
from modmimic.program import ema_decay

KEYS = ["pos", "goal_pos", "vel"]


# --- schedule ------------------------------------------------------------------------------------------------------

def test_squaredcos_alphas_cumprod_telescopes_to_the_cosine():
    """Uncapped betas are ratios of abar, so their cumulative product is abar((t+1)/T) / abar(0)."""
    T = 100
    ab = alphas_cumprod_for(betas_for(T)).double()
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T)], dtype=torch.float64)
    capped = betas_for(T) >= 0.999
    assert capped.sum() == 1 and capped[-1]  # only the very last beta hits the 0.999 cap
    assert torch.allclose(ab[:-1], expected[:-1], rtol=1e-5, atol=1e-7)
    assert torch.allclose(betas_for(5, "linear"), torch.tensor([1e-4, 0.005075, 0.01005, 0.015025, 0.02]))
    with pytest.raises(ValueError, match="beta_schedule"):
        betas_for(10, "cosine")


def test_q_sample_is_the_closed_form():
    ab = alphas_cumprod_for(betas_for(100))
    x0, eps = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    t = torch.tensor([0, 42, 99])
    out = q_sample(ab, x0, eps, t)
    for i in range(3):
        a = ab[t[i]].item()
        assert torch.allclose(out[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i], atol=1e-6)


def test_ddpm_posterior_matches_the_gaussian_product():
    """q(x_{t-1} | x_t, x0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(a_{t-1}) x0, 1 - a_{t-1})."""
    ab = alphas_cumprod_for(betas_for(100)).double().tolist()
    x0, xt = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    for t in (1, 30, 99):
        a_t, a_prev = ab[t], ab[t - 1]
        alpha, beta = a_t / a_prev, 1 - a_t / a_prev
        precision = alpha / beta + 1 / (1 - a_prev)
        var = 1 / precision
        mean = var * (math.sqrt(alpha) / beta * xt + math.sqrt(a_prev) / (1 - a_prev) * x0)
        m, v = ddpm_posterior(a_t, a_prev, x0, xt)
        assert torch.allclose(m, mean, atol=1e-9) and v == pytest.approx(var, rel=1e-9)


def test_ddim_step_and_timesteps():
    s = NoiseSchedule("ddim", 100, 10)
    assert s.timesteps() == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert inference_timesteps(100, 100) == list(range(99, -1, -1))
    ab = s.alphas_cumprod.double().tolist()
    x0 = torch.rand(2, 3, 1) * 1.8 - 0.9  # inside the clip range
    eps = torch.randn(2, 3, 1)
    t = 50
    xt = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * eps
    prev = s.step(eps, t, xt)  # DDIM, eta 0: sqrt(a_prev) x0 + sqrt(1 - a_prev) eps with a_prev = a_{t-10}
    assert torch.allclose(prev, math.sqrt(ab[40]) * x0 + math.sqrt(1 - ab[40]) * eps, atol=1e-5)
    assert torch.allclose(s.step(eps, 0, math.sqrt(ab[0]) * x0 + math.sqrt(1 - ab[0]) * eps), x0, atol=1e-5)
    # clip_sample: the implied x0 is clipped to [-1, 1]; "sample" prediction gives x0 directly
    big = torch.full((1, 3, 1), 3.0)
    s2 = NoiseSchedule("ddim", 100, 10, prediction_type="sample")
    xt = math.sqrt(ab[t]) * big + math.sqrt(1 - ab[t]) * eps[:1]
    eps_implied = (xt - math.sqrt(ab[t]) * big) / math.sqrt(1 - ab[t])
    assert torch.allclose(s2.step(big, t, xt), math.sqrt(ab[40]) * 1.0 + math.sqrt(1 - ab[40]) * eps_implied,
                          atol=1e-5)


def test_ddpm_last_step_is_the_clipped_x0_without_noise():
    s = NoiseSchedule("ddpm", 100, 100)
    ab0 = s.alphas_cumprod[0].item()
    x0 = torch.tensor([[[0.5], [-2.0]]])
    eps = torch.randn(1, 2, 1)
    xt = math.sqrt(ab0) * x0 + math.sqrt(1 - ab0) * eps
    assert torch.allclose(s.step(eps, 0, xt), x0.clamp(-1, 1), atol=1e-5)


# --- EMA ---------------------------------------------------------------------------------------------------------

def test_ema_decay_follows_the_power_schedule():
    assert ema_decay(0) == 0.0 and ema_decay(1) == 0.0
    for step in (2, 3, 10, 500):
        assert ema_decay(step) == pytest.approx(1 - step ** -0.75)  # k = step - 1: 1 - (1 + k)^-0.75
    assert ema_decay(10 ** 9) == 0.9999
    assert ema_decay(5, max_decay=0.0) == 0.0


def small(recipe="diffusion_policy", *extra):
    return compose(recipe, [f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]", "algo.unet.down_dims=[16,32]",
                            "algo.unet.diffusion_step_embed_dim=16", "algo.transformer.n_emb=16",
                            "algo.transformer.n_layer=1", "algo.transformer.n_head=2", "train.batch_size=8",
                            "algo.horizon.prediction_horizon=4", "algo.horizon.action_horizon=2",
                            "algo.ddpm.num_inference_timesteps=10", "algo.ddim.num_inference_timesteps=5", *extra])


def build(cfg, path, seed=0):
    return build_from_reach(cfg, path, KEYS, seed)


def test_ema_target_is_the_hand_recursion_of_the_policy(reach_hdf5):
    store, sampler, algo = build(small(), reach_hdf5)
    algo.set_train()
    params = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    ema = None
    for step in range(5):
        algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
        d = ema_decay(step, power=0.75)
        ema = params(algo.nets["policy"]).clone() if ema is None else d * ema + (1 - d) * params(algo.nets["policy"])
    assert torch.allclose(params(algo.nets["ema_policy"]), ema, atol=1e-6)
    assert not torch.allclose(params(algo.nets["ema_policy"]), params(algo.nets["policy"]), atol=1e-6)
    # EMA off: the target is the policy
    store, sampler, algo = build(small("diffusion_policy", "algo.ema.enabled=false"), reach_hdf5)
    for _ in range(3):
        algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    assert torch.equal(params(algo.nets["ema_policy"]), params(algo.nets["policy"]))


# --- networks ----------------------------------------------------------------------------------------------------

def test_denoiser_shapes_and_film_conditioning():
    unet = ConditionalUnet1D(3, 2 * 5, diffusion_step_embed_dim=16, down_dims=[16, 32, 64], n_groups=8)
    x, cond = torch.randn(4, 16, 3), torch.randn(4, 2, 5)
    y = unet(x, torch.tensor([0, 1, 2, 3]), cond)
    assert y.shape == (4, 16, 3) and unet(x, 7, cond).shape == (4, 16, 3)
    assert not torch.allclose(unet(x, 7, cond), unet(x, 7, cond + 1.0))  # FiLM: the condition changes the output
    assert not torch.allclose(unet(x, 7, cond), unet(x, 50, cond))  # and so does the diffusion step
    for m in unet.modules():  # no FiLM: scale 0 and bias 0 -> the condition cannot reach the output
        if hasattr(m, "film"):
            torch.nn.init.zeros_(m.film[1].weight)
            torch.nn.init.zeros_(m.film[1].bias)
    assert torch.equal(unet(x, 7, cond), unet(x, 50, cond + 1.0))
    with pytest.raises(ValueError, match="multiple of 4"):
        unet.check_horizon(6)
    tr = TransformerDenoiser(3, 5, horizon=6, obs_horizon=2, n_layer=2, n_head=2, n_emb=16, p_drop_attn=0.0).eval()
    x = torch.randn(4, 6, 3)
    y = tr(x, 5, cond)
    assert y.shape == (4, 6, 3)
    # causal: action token i sees action tokens <= i and observation tokens j <= i + 1 (j = 1..To)
    x2 = x.clone()
    x2[:, 3:] += 1.0
    assert torch.allclose(tr(x2, 5, cond)[:, :3], y[:, :3], atol=1e-6)
    c2 = cond.clone()
    c2[:, 1] += 50.0  # the second observation is hidden from action token 0 only
    y2 = tr(x, 5, c2)
    assert torch.allclose(y2[:, 0], y[:, 0], atol=1e-6) and (y2[:, 1] - y[:, 1]).abs().max() > 1e-4


def test_unet_keys_reach_the_network(reach_hdf5):
    """robomimic ignores algo.unet.*; here they build the UNet."""
    counts = {}
    for dims, k in (("[16,32]", 5), ("[16,32,64]", 5), ("[16,32]", 3)):
        _, _, algo = build(small("diffusion_policy", f"algo.unet.down_dims={dims}", f"algo.unet.kernel_size={k}"),
                           reach_hdf5)
        counts[(dims, k)] = sum(p.numel() for p in algo.nets["policy"].parameters())
        unet = algo.nets["policy"].denoiser
        assert unet.down[0][0].block1.block[0].kernel_size == (k,)
    assert len(set(counts.values())) == 3
    _, _, algo = build(small("diffusion_policy", "algo.unet.diffusion_step_embed_dim=32", "algo.unet.n_groups=4"),
                       reach_hdf5)
    unet = algo.nets["policy"].denoiser
    assert unet.step_encoder[1].in_features == 32 and unet.down[0][0].block1.block[1].num_groups == 4


def test_actions_a_clamping_sampler_cannot_reach_are_an_error(reach_hdf5, tmp_path):
    """Diffusion Policy and the flow policy clamp every sampled action to [-1, 1] (their network's ``action_bound``):
    on un-normalized actions outside it (ALOHA's joint targets reach 3.1) training is refused before the run
    directory exists, naming the fix; min_max normalization, or a sampler that does not clamp, trains."""
    import shutil

    import h5py

    from modmimic.trainer import train

    path = tmp_path / "wide.hdf5"
    shutil.copy(reach_hdf5, path)
    with h5py.File(path, "r+") as f:
        for d in f["data"].values():
            d["actions"][...] = 3.0 * d["actions"][...]
    one_step = [f"train.data={path}", f"train.output_dir={tmp_path / 'runs'}", "train.num_epochs=1",
                "experiment.epoch_every_n_steps=1", "experiment.validation_epoch_every_n_steps=1",
                "experiment.rollout.enabled=false", "experiment.logging.log_tb=false"]

    def flow(*extra):
        return compose("flow_policy", [f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]", "train.batch_size=8",
                                       "algo.horizon.prediction_horizon=4", "algo.horizon.action_horizon=2",
                                       *one_step, *extra])

    def dp(*extra):
        return small("diffusion_policy", *one_step, *extra)

    for cfg in (dp, flow, lambda *e: dp("algo.ddpm.enabled=false", "algo.ddim.enabled=true", *e)):
        with pytest.raises(ConfigError, match=r"actions span \[-3, 3\], but network 'policy' samples actions "
                                              r"clamped to \[-1, 1\]: set train.action_config.actions"
                                              r".normalization=min_max"):
            train(cfg(), progress=False)
        assert not (tmp_path / "runs").exists()
        assert train(cfg("train.action_config.actions.normalization=min_max"), progress=False)["epoch"] == 1
        shutil.rmtree(tmp_path / "runs")
    assert train(dp("algo.ddpm.clip_sample=false"), progress=False)["epoch"] == 1


def test_factory_dispatch_and_bad_settings(reach_hdf5):
    store = load_episode_store(str(reach_hdf5), KEYS, load_next_obs=False)
    cfg = small("diffusion_policy", "algo.unet.enabled=false", "algo.transformer.enabled=true")
    algo = algo_factory("diffusion_policy", cfg, store.obs_shapes(), store.ac_dim)
    assert algo.recipe_name == "diffusion_transformer"
    for bad, match in ((["algo.ddim.enabled=true"], "exactly one noise scheduler"),
                       (["algo.unet.enabled=false"], "exactly one denoiser")):
        with pytest.raises(ConfigError, match=match):
            algo_factory("diffusion_policy", small("diffusion_policy", *bad), store.obs_shapes(), store.ac_dim)
    with pytest.raises(ConfigError, match="multiple of 2"):
        algo_factory("diffusion_policy", small("diffusion_policy", "algo.horizon.prediction_horizon=5"),
                     store.obs_shapes(), store.ac_dim)
    with pytest.raises(ConfigError, match="set train.frame_stack=2 .observation_horizon."):  # at compose time
        small("diffusion_policy", "train.frame_stack=1")


def test_training_batch_is_robomimics_window(reach_hdf5):
    """frame_stack = To, seq_length = Tp: observations of steps t-To+1..t, actions of steps t-To+1..t+Tp-To."""
    cfg = small()
    store, sampler, algo = build(cfg, reach_hdf5)
    To, Tp = 2, 4
    w = sampler.gather(torch.arange(len(sampler)))
    b = algo.process_batch_for_training(w)
    assert b[K.ACTION].shape == (len(sampler), Tp, 2) and b[K.obs("pos")].shape == (len(sampler), To, 2)
    i = 5  # demo 0, current step t = 5 (no padding)
    flat = store.flat
    a0, a1, _ = store.columns[K.ACTION]
    assert torch.equal(b[K.ACTION][i], flat[5 - To + 1:5 - To + 1 + Tp, a0:a1])
    o0, o1, _ = store.columns[K.obs("pos")]
    assert torch.equal(b[K.obs("pos")][i], flat[5 - To + 1:6, o0:o1])


@pytest.mark.parametrize("recipe,extra", [("diffusion_policy", []), ("diffusion_policy", ["algo.ddpm.enabled=false",
                                                                                          "algo.ddim.enabled=true"]),
                                          ("diffusion_transformer", [])])
def test_checkpoint_round_trip_acts_with_ema_weights(recipe, extra, reach_hdf5, tmp_path):
    store, sampler, algo = build(small(recipe, *extra), reach_hdf5)
    algo.set_train()
    for _ in range(3):
        algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    assert_checkpoint_acts_with_ema(algo, store, tmp_path)


def assert_checkpoint_acts_with_ema(algo, store, tmp_path):
    """The checkpoint's policy acts as the trained one, bit for bit, reading the EMA network only (a change of the
    trained network leaves its actions alone, a change of the EMA does not). Returns the checkpoint."""
    a, run, policy, ckpt = checkpoint_round_trip(algo, store, tmp_path, KEYS)
    assert np.array_equal(a, run(policy)) and a.shape == (5, 2) and np.abs(a).max() <= 1.0
    with torch.no_grad():  # acting reads the EMA network only
        for p in policy.policy.nets["policy"].parameters():
            p.add_(1.0)
    assert np.array_equal(a, run(policy))
    with torch.no_grad():
        for p in policy.policy.nets["ema_policy"].parameters():
            p.add_(0.1)
    assert not np.array_equal(a, run(policy))
    return ckpt


def test_explain_diffusion_policy():
    from modmimic.recipe import explain

    text = explain("diffusion_policy", ["algo.unet.down_dims=[16,32]"])
    assert "horizon_window(obs_horizon=2, prediction_horizon=16, frame_stack=2)" in text
    assert "ema_policy" in text and "EMA" in text and "Chunked(net=ema_policy, action_horizon=8" in text
    assert "start=1" in text and "cosine, 500 warm-up steps" in text


# --- chunked acting ----------------------------------------------------------------------------------------------

class FakeChunker(torch.nn.Module):
    """``predict_chunk``: action ``[plan number, env obs at the newest step, chunk index]`` so that every executed
    action says which plan, which observation and which chunk index it came from; records the windows."""

    def __init__(self, Tp=6):
        super().__init__()
        self.Tp, self.calls, self.windows = Tp, 0, []

    def predict_chunk(self, td):
        self.calls += 1
        x = td[K.obs("x")]
        self.windows.append(x.clone())
        newest = x[:, -1, 0] if x.dim() == 3 else x[:, 0]
        B = x.shape[0]
        idx = torch.arange(self.Tp, dtype=torch.float32)
        return torch.stack([torch.full((B, self.Tp), float(self.calls)), newest[:, None].expand(B, self.Tp),
                            idx.expand(B, self.Tp)], dim=-1)


def obs_td(values):
    v = torch.as_tensor(values, dtype=torch.float32)[:, None]
    return TensorDict({K.OBS: {"x": v}}, batch_size=[len(v)])


def test_chunked_executes_in_order_and_replans_every_ta_steps():
    net = FakeChunker(Tp=6)
    path = Chunked({"p": net}, "p", action_horizon=3, obs_horizon=2, start=1)
    path.reset(2)
    acts = [path(obs_td([10 + t, 20 + t])) for t in range(7)]
    plans = [int(a[0, 0]) for a in acts]
    assert plans == [1, 1, 1, 2, 2, 2, 3] and net.calls == 3
    assert [int(a[0, 2]) for a in acts] == [1, 2, 3, 1, 2, 3, 1]  # chunk indices start .. start + Ta - 1
    assert [float(a[1, 1]) for a in acts] == [20, 20, 20, 23, 23, 23, 26]  # planned from the obs at re-plan time
    # observation history: filled with the first observation, then the last To steps, oldest first
    assert net.windows[0][:, :, 0].tolist() == [[10, 10], [20, 20]]
    assert net.windows[1][:, :, 0].tolist() == [[12, 13], [22, 23]]
    with pytest.raises(ValueError, match="Tp >= start"):
        Chunked({"p": FakeChunker(Tp=3)}, "p", action_horizon=3, start=1)(obs_td([0.0]))


def test_chunked_envs_are_independent_and_reset_per_episode():
    net = FakeChunker(Tp=4)
    path = Chunked({"p": net}, "p", action_horizon=3, obs_horizon=2, start=0)
    path.reset(3)
    path(obs_td([0, 100, 200]))
    path(obs_td([1, 101, 201]))
    path.reset(3, torch.tensor([False, True, False]))  # env 1 starts a new episode
    a = path(obs_td([2, 500, 202]))
    assert a[:, 2].tolist() == [2, 0, 2]  # envs 0 and 2 continue their queue; env 1 re-planned at index 0
    assert a[1, 1] == 500 and a[0, 1] == 0 and a[2, 1] == 200
    assert net.windows[-1][:, :, 0].tolist() == [[500, 500]]  # only env 1 planned, its history restarted
    # the per-env result equals a run of env 1 alone from its reset
    solo = Chunked({"p": FakeChunker(Tp=4)}, "p", action_horizon=3, obs_horizon=2, start=0)
    solo.reset(1)
    b = solo(obs_td([500]))
    assert torch.equal(a[1, 1:], b[0, 1:])
    a = path(obs_td([3, 501, 203]))
    assert a[:, 2].tolist() == [0, 1, 0]  # envs 0 and 2 exhausted their 3 actions and re-planned


def test_temporal_ensembling_weights_by_hand():
    k = 0.5
    net = FakeChunker(Tp=4)
    path = Chunked({"p": net}, "p", action_horizon=3, obs_horizon=1, start=1, temporal_ensemble=True, ensemble_k=k)
    path.reset(1)
    out = [path(obs_td([float(t)])) for t in range(4)]
    assert net.calls == 4  # re-plans every step
    # step 2: proposals of plans 1 (age 2, chunk index start+2=3), 2 (age 1, index 2), 3 (age 0, index 1);
    # weights exp(-k*i), i = 0 the oldest (plan 1)
    w = np.exp(-k * np.arange(3))
    w /= w.sum()
    plan, obs, idx = np.array([1, 2, 3.0]), np.array([0, 1, 2.0]), np.array([3, 2, 1.0])
    assert np.allclose(out[2][0].numpy(), [w @ plan, w @ obs, w @ idx], atol=1e-6)
    # step 1: two proposals (plans 1 and 2); step 0: the first plan alone
    w2 = np.exp(-k * np.arange(2))
    w2 /= w2.sum()
    assert np.allclose(out[1][0].numpy(), [w2 @ [1, 2.0], w2 @ [0, 1.0], w2 @ [2, 1.0]], atol=1e-6)
    assert np.allclose(out[0][0].numpy(), [1, 0, 1])
    # a reset drops the old proposals
    path.reset(1, torch.tensor([True]))
    assert np.allclose(path(obs_td([9.0]))[0].numpy(), [5, 9, 1])


def test_bc_transformer_future_actions_run_as_chunks(reach_hdf5):
    cfg = compose("bc_transformer", [f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]",
                                     "algo.transformer.embed_dim=16", "algo.transformer.num_layers=1",
                                     "algo.transformer.num_heads=2", "algo.transformer.context_length=3",
                                     "train.frame_stack=3", "train.seq_length=3", "algo.transformer.pred_future_acs=true",
                                     "algo.transformer.supervise_all_steps=true", "act.action_horizon=2"])
    store = load_episode_store(str(reach_hdf5), KEYS, load_next_obs=False)
    sampler = WindowSampler(store, 4, seq_length=3, frame_stack=3, seed=0)
    algo = algo_factory("bc", cfg, store.obs_shapes(), store.ac_dim)
    algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    algo.set_eval()
    b = sampler.gather(torch.arange(4))  # demo 0, steps 0..3: contexts start padded with the first observation
    pol = RolloutPolicy(algo)
    pol.start_episode(num_envs=1)
    acts = [pol({k: b[K.obs(k)][t, 2].numpy()[None] for k in KEYS}, batched_ob=True)[0] for t in range(4)]
    with torch.no_grad():
        first = algo.nets["policy"](b[0, :3].unsqueeze(0))[0]  # context [o0, o0, o0]
        second = algo.nets["policy"](b[2, :3].unsqueeze(0))[0]  # context [o0, o1, o2] at step 2
    assert np.allclose(acts[0], first[0], atol=1e-5) and np.allclose(acts[1], first[1], atol=1e-5)
    assert np.allclose(acts[2], second[0], atol=1e-5) and np.allclose(acts[3], second[1], atol=1e-5)
    with pytest.raises(ConfigError, match="pred_future_acs"):
        algo_factory("bc", compose("bc_transformer", [f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]",
                                                      "act.action_horizon=2"]), store.obs_shapes(), store.ac_dim)


def test_context_is_a_chunked_path():
    assert issubclass(Context, Chunked)
