"""ACT (``act`` recipe): network shapes, the masked L1 + KL loss against hand computations, deterministic chunk
prediction, learning on the reach data, checkpoint round trip, settings errors, and acting through the shared
chunk acting path (``acting.Chunked``, branch diffusion: those tests run once it has merged)."""
import json
import math
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

from modmimic import keys as K
from modmimic.algo import algo_factory
from modmimic.components import acting
from modmimic.components.batching import action_chunk
from modmimic.components.losses.act import act_loss, kl_to_standard_normal
from modmimic.components.nets.act import act_policy
from modmimic.config import ConfigError, compose
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler
from modmimic.policy import RolloutPolicy, make_checkpoint, policy_from_checkpoint, save_checkpoint

KEYS = ["pos", "goal_pos", "vel"]
SHAPES = {"pos": (2,), "goal_pos": (2,), "vel": (2,)}
SMALL = ["observation.modalities.obs.low_dim=[pos,goal_pos,vel]", "algo.act.embed_dim=32", "algo.act.num_heads=2",
         "algo.act.hidden_dim=64", "algo.act.num_layers=1", "algo.act.decoder.num_layers=1",
         "algo.act.vae.num_layers=1", "algo.act.vae.latent_dim=4", "algo.act.chunk_size=8", "train.batch_size=16",
         "algo.optim_params.policy.learning_rate.initial=1e-3", "experiment.rollout.enabled=false"]


def small_net(chunk=4, dropout=0.0, **kw):
    torch.manual_seed(0)
    return act_policy(SHAPES, 2, chunk_size=chunk, embed_dim=16, num_heads=2, hidden_dim=32, num_layers=1,
                      decoder={"num_layers": 1}, vae={"num_layers": 2, "latent_dim": 3}, dropout=dropout, **kw)


def obs_td(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({K.OBS: {k: torch.randn(B, *s, generator=g) for k, s in SHAPES.items()}}, batch_size=[B])


def chunk_td(B, k, seed=0, mask=None):
    td = obs_td(B, seed)
    td[K.ACTION] = torch.randn(B, k, 2, generator=torch.Generator().manual_seed(seed + 1))
    td[K.MASK] = torch.ones(B, k, dtype=torch.bool) if mask is None else mask
    return td


def act_config(*overrides):
    """The act recipe, small."""
    return compose("act", [*SMALL, *overrides])


def build(cfg, path, seed=0):
    torch.manual_seed(seed)
    store = load_episode_store(str(path), KEYS, load_next_obs=False)
    sampler = WindowSampler(store, cfg.train.batch_size, seq_length=cfg.train.seq_length, frame_stack=1, seed=seed)
    return store, sampler, algo_factory("act", cfg, store.obs_shapes(), store.ac_dim)


class Fixed(torch.nn.Module):
    """A stand-in policy with fixed outputs, for hand computations of the loss."""

    def __init__(self, action, mu, logvar):
        super().__init__()
        self.out = {"action": action, "mu": mu, "logvar": logvar}

    def forward(self, td):
        return self.out


# --- network -------------------------------------------------------------------------------------------------------

def test_output_shapes():
    net = small_net(chunk=5)
    td = chunk_td(3, 5)
    out = net(td)
    assert out["action"].shape == (3, 5, 2) and out["mu"].shape == (3, 3) and out["logvar"].shape == (3, 3)
    assert net.predict_chunk(obs_td(3)).shape == (3, 5, 2)
    assert net.obs_tokens(td).shape == (3, 3, 16)  # one token per observation key
    with pytest.raises(ValueError, match=r"action chunks \[B, 5, 2\]"):
        net(chunk_td(3, 4))


def test_predict_chunk_is_deterministic_in_eval_mode_and_decodes_z_zero():
    net = small_net(dropout=0.3).eval()
    td = obs_td(4)
    a, b = net.predict_chunk(td), net.predict_chunk(td)
    assert torch.equal(a, b)
    assert torch.equal(a, net.decode(td, torch.zeros(4, 3)))
    assert not torch.equal(a, net.decode(td, torch.ones(4, 3)))  # the latent matters
    # training mode: dropout (and in forward, the posterior sample) make outputs random
    net.train()
    assert not torch.equal(net.predict_chunk(td), net.predict_chunk(td))


def test_posterior_ignores_padded_steps():
    net = small_net().eval()
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    td = chunk_td(2, 4, mask=mask)
    mu, logvar = net.posterior(td, td[K.ACTION], mask)
    changed = td[K.ACTION].clone()
    changed[0, 2:] += 5.0
    mu2, logvar2 = net.posterior(td, changed, mask)
    assert torch.allclose(mu, mu2, atol=1e-6) and torch.allclose(logvar, logvar2, atol=1e-6)
    changed[1, 3] += 5.0  # a real step does change the posterior
    assert not torch.allclose(net.posterior(td, changed, mask)[0][1], mu[1])


# --- loss ----------------------------------------------------------------------------------------------------------

def test_loss_equals_hand_computation():
    action = torch.tensor([[[1.0, -2.0], [0.5, 0.5], [3.0, 3.0]], [[-1.0, 1.0], [2.0, 0.0], [0.0, 4.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    td = TensorDict({K.ACTION: action, K.MASK: mask}, batch_size=[2])
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    policy = Fixed(torch.zeros(2, 3, 2), mu, logvar)
    out = act_loss(td, policy, kl_weight=10.0)
    # L1 over the 5 real steps x 2 dims: (1 + 2 + .5 + .5) + (1 + 1 + 2 + 0 + 0 + 4) = 12 -> 12 / 10
    # KL row 0: -0.5 * [(1 + 0 - 1 - 1) + (1 + log 2 - 0 - 2)] = 1 - 0.5 log 2; row 1: 0; mean over rows
    l1, kl = 1.2, (1.0 - 0.5 * math.log(2.0)) / 2
    assert out["l1_loss"].item() == pytest.approx(l1, abs=1e-6)
    assert out["kl_loss"].item() == pytest.approx(kl, abs=1e-6)
    assert out["loss"].item() == pytest.approx(l1 + 10.0 * kl, abs=1e-5)
    # a padded step's action does not count
    td2 = td.clone()
    td2[K.ACTION][0, 2] = torch.tensor([-100.0, 7.0])
    assert act_loss(td2, policy, kl_weight=10.0)["loss"].item() == out["loss"].item()


def test_kl_is_zero_at_the_prior_and_matches_torch():
    z = torch.zeros(4, 3)
    out = act_loss(chunk_td(4, 2), Fixed(torch.zeros(4, 2, 2), z, z), kl_weight=10.0)
    assert out["kl_loss"].item() == 0.0 and out["loss"].item() == out["l1_loss"].item()
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    assert torch.allclose(kl_to_standard_normal(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1),
                          atol=1e-5)


def test_loss_with_the_real_network_ignores_padded_actions():
    net = small_net().eval()  # z = posterior mean: deterministic
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    td = chunk_td(2, 4, mask=mask)
    base = act_loss(td, net)["loss"]
    td2 = td.clone()
    td2[K.ACTION][0, 3] += 3.0
    td2[K.ACTION][1, 1:] -= 2.0
    assert torch.allclose(act_loss(td2, net)["loss"], base, atol=1e-6)
    td2[K.ACTION][1, 0] -= 2.0
    assert not torch.allclose(act_loss(td2, net)["loss"], base, atol=1e-3)


def test_action_chunk_batch():
    B, T = 3, 6
    w = TensorDict({K.OBS: {"pos": torch.arange(B * T * 2.0).view(B, T, 2)},
                    K.ACTION: torch.randn(B, T, 2), K.MASK: torch.rand(B, T) > 0.5}, batch_size=[B, T])
    out = action_chunk(w, chunk_size=4)
    assert out.batch_size == (B,) and torch.equal(out[K.OBS]["pos"], w[K.OBS]["pos"][:, 0])
    assert torch.equal(out[K.ACTION], w[K.ACTION][:, :4]) and torch.equal(out[K.MASK], w[K.MASK][:, :4])
    with pytest.raises(ValueError, match="train.seq_length = algo.act.chunk_size"):
        action_chunk(w, chunk_size=7)
    with pytest.raises(ValueError, match="frame_stack must be 1"):
        action_chunk(w, chunk_size=4, frame_stack=2)


# --- recipe --------------------------------------------------------------------------------------------------------

def test_recipe_learns_on_reach(reach_hdf5):
    _, sampler, algo = build(act_config(), reach_hdf5)
    algo.set_train()
    b = algo.process_batch_for_training(sampler.sample())
    assert b[K.ACTION].shape == (16, 8, 2) and b[K.MASK].shape == (16, 8) and not b[K.MASK].all()
    l1s, losses = [], []
    for _ in range(60):
        info = algo.log_info(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1))
        l1s.append(info["act/l1_loss"])
        losses.append(info["Loss"])
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    assert np.mean(l1s[-10:]) < 0.8 * np.mean(l1s[:5]), (l1s[:5], l1s[-10:])


def test_checkpoint_round_trip_same_chunks(reach_hdf5, tmp_path):
    store, sampler, algo = build(act_config(), reach_hdf5)
    algo.set_train()
    for _ in range(3):
        algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    path = str(tmp_path / "ckpt.pth")
    save_checkpoint(path, make_checkpoint(algo, env_meta=store.env_meta))
    policy, ckpt = policy_from_checkpoint(ckpt_path=path)
    assert ckpt["recipe_name"] == "act"
    td = algo.process_batch_for_training(sampler.sample())
    algo.set_eval()
    policy.policy.set_eval()
    assert torch.equal(algo.nets["policy"].predict_chunk(td), policy.policy.nets["policy"].predict_chunk(td))


def test_bad_settings_name_their_keys():
    base = act_config("train.seq_length=8")
    for key, value, message in [("algo.act.num_heads", 3, "algo.act.embed_dim"),
                                ("algo.act.chunk_size", 0, "algo.act.chunk_size"),
                                ("algo.act.vae.latent_dim", 0, "algo.act.vae.latent_dim"),
                                ("algo.act.kl_weight", -1.0, "algo.act.kl_weight"),
                                ("algo.act.dropout", 1.5, "algo.act.dropout"),
                                ("algo.act.decoder.layers", 2, r"algo.act.decoder: unknown keys \['layers'\]")]:
        cfg = base.copy()
        OmegaConf.update(cfg, key, value, force_add=True)
        with pytest.raises(ConfigError, match=message):
            algo_factory("act", cfg, SHAPES, 2)
    with pytest.raises(ConfigError, match="algo.act.chunk_size"):
        compose("act", [*SMALL, "train.seq_length=4"])
    with pytest.raises(ConfigError, match="frame_stack must be 1"):
        compose("act", [*SMALL, "train.frame_stack=2"])


def test_shipped_recipe_acts_through_the_shared_chunk_path():
    assert isinstance(algo_factory("act", compose("act", SMALL), SHAPES, 2).act_path, acting.Chunked)


# --- acting ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ensemble", [False, True])
def test_rollout_policy_acts_with_chunks(reach_hdf5, ensemble):
    """Without ensembling the first chunk is executed open loop; with it, step 1 averages chunk 0's second action
    (weight 1, the oldest) and chunk 1's first (weight exp(-k))."""
    k = 0.5
    cfg = act_config(f"algo.act.temporal_ensemble={str(ensemble).lower()}", f"algo.act.temporal_ensemble_k={k}")
    _, _, algo = build(cfg, reach_hdf5)
    pol = RolloutPolicy(algo)
    pol.start_episode()
    rng = np.random.default_rng(0)
    obs = [{key: rng.uniform(-1, 1, 2).astype(np.float32) for key in KEYS} for _ in range(3)]
    acts = np.stack([pol(o) for o in obs])
    net = algo.nets["policy"]
    chunks = [net.predict_chunk(TensorDict({K.OBS: {key: torch.as_tensor(o[key])[None] for key in KEYS}},
                                           batch_size=[1]))[0].detach().numpy() for o in obs]
    np.testing.assert_allclose(acts[0], chunks[0][0], atol=1e-5)
    if ensemble:
        w = np.array([1.0, math.exp(-k)])
        np.testing.assert_allclose(acts[1], (w[0] * chunks[0][1] + w[1] * chunks[1][0]) / w.sum(), atol=1e-5)
    else:
        np.testing.assert_allclose(acts[1:], chunks[0][1:3], atol=1e-5)


@pytest.mark.slow
def test_act_learns_lift(tmp_path):
    """ACT, small, on the embedded scripted Lift demos, then ``modmimic.eval`` in robosuite's Lift."""
    pytest.importorskip("robosuite", reason="simulator extra not installed")
    import subprocess
    import sys

    args = ["recipe=act", "train.output_dir=o", "train.hdf5_normalize_obs=true", "train.num_epochs=20",
            "experiment.epoch_every_n_steps=100", "experiment.logging.log_tb=false", "experiment.rollout.enabled=false",
            "train.batch_size=64", "algo.act.chunk_size=20", "algo.act.embed_dim=128", "algo.act.num_heads=4",
            "algo.act.hidden_dim=512", "algo.act.num_layers=2", "algo.act.vae.num_layers=2",
            "algo.optim_params.policy.learning_rate.initial=1e-4"]
    r = subprocess.run([sys.executable, "-m", "modmimic.train", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    (ckpt,) = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "o") for f in fs if f == "last.pth"]
    e = subprocess.run([sys.executable, "-m", "modmimic.eval", f"checkpoint={ckpt}", "episodes=20", "horizon=200",
                        "num_envs=2", "json=summary.json"], cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert e.returncode == 0, e.stderr[-3000:]
    s = json.load(open(tmp_path / "summary.json"))
    # not yet measured (acting.Chunked had not merged when this was written): BC reaches >= 0.85 on these demos
    assert s["Success_Rate"] >= 0.7, f"ACT on 200 scripted Lift demos: {s['Num_Success']}/20 successes"
