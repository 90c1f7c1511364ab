"""Recipes through the robomimic Algo API: build, learn, checkpoint round trip, step-wise acting, bad input."""
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from modmimic import keys as K
from modmimic.algo import NonFiniteLossError, algo_factory, bc_recipe_from_flags
from modmimic.config import ConfigError, compose, config_factory, list_recipes
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler
from modmimic.data.synthetic import make_reach_dataset
from modmimic.policy import (CheckpointError, RolloutPolicy, load_checkpoint, make_checkpoint,
                             policy_from_checkpoint, save_checkpoint)

KEYS = ["pos", "goal_pos", "vel"]
BC_RECIPES = ["bc", "bc_gaussian", "bc_gmm", "bc_vae", "bc_rnn", "bc_rnn_gmm", "bc_transformer",
              "bc_transformer_gmm"]


def small(recipe, *extra):
    """Tiny networks and a learning rate that learns in a few hundred steps on the reach data."""
    ov = [f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]", "algo.actor_layer_dims=[64,64]",
          "algo.optim_params.policy.learning_rate.initial=0.001", "algo.rnn.hidden_dim=64",
          "algo.transformer.embed_dim=32", "algo.transformer.num_layers=2", "algo.transformer.num_heads=2",
          "algo.transformer.emb_dropout=0.0", "algo.transformer.attn_dropout=0.0",
          "algo.transformer.block_output_dropout=0.0", "algo.vae.encoder_layer_dims=[64,64]",
          "algo.vae.decoder_layer_dims=[64,64]", "algo.vae.prior_layer_dims=[64,64]", "train.batch_size=32"]
    if "transformer" in recipe:
        ov += ["algo.transformer.context_length=3", "train.frame_stack=3"]
    if "rnn" in recipe:
        ov += ["train.seq_length=5", "algo.rnn.horizon=5"]
    return compose(recipe, ov + list(extra))


@pytest.fixture(scope="module")
def reach(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "reach.hdf5")
    make_reach_dataset(path, n_demos=24, seed=0)
    return path


def build(cfg, path, seed=0):
    torch.manual_seed(seed)
    store = load_episode_store(path, KEYS, load_next_obs=cfg.train.hdf5_load_next_obs)
    sampler = WindowSampler(store, cfg.train.batch_size, seq_length=cfg.train.seq_length,
                            frame_stack=cfg.train.frame_stack, seed=seed)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    return store, sampler, algo


def test_every_bc_recipe_is_listed():
    assert set(BC_RECIPES) <= set(list_recipes())


@pytest.mark.parametrize("recipe", BC_RECIPES)
def test_recipe_learns(recipe, reach):
    cfg = small(recipe)
    store, sampler, algo = build(cfg, reach)
    algo.set_train()
    losses = []
    for _ in range(250):
        info = algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
        losses.append(algo.log_info(info)["Loss"])
    first, last = np.mean(losses[:10]), np.mean(losses[-20:])
    if recipe in ("bc", "bc_rnn", "bc_transformer", "bc_vae"):  # squared-error scale
        assert last < 0.35 * first, (first, last)
    else:  # likelihood: a clear drop in nats
        assert last < first - 0.5, (first, last)
    # the learned policy imitates the expert on training states
    algo.set_eval()
    b = sampler.sample()
    if recipe.startswith("bc_rnn") or recipe.startswith("bc_transformer"):
        return
    pred = algo.get_action(b[:, 0][K.OBS])
    err = (pred - b[K.ACTION][:, 0]).abs().mean()
    assert err < 0.25, err


@pytest.mark.parametrize("recipe", BC_RECIPES)
def test_checkpoint_round_trip_identical_actions(recipe, reach, tmp_path):
    cfg = small(recipe)
    store, sampler, algo = build(cfg, reach)
    algo.set_train()
    for _ in range(3):
        algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    stats = store.obs_normalization_stats()
    path = str(tmp_path / "ckpt.pth")
    save_checkpoint(path, make_checkpoint(algo, obs_normalization_stats=stats,
                                          action_normalization_stats=store.action_normalization_stats(),
                                          env_meta=store.env_meta))
    policy, ckpt = policy_from_checkpoint(ckpt_path=path)
    assert ckpt["recipe_name"] == recipe and ckpt["env_metadata"]["env_name"] == "PointReach"
    original = RolloutPolicy(algo, stats, store.action_normalization_stats())
    rng = np.random.default_rng(0)
    obs = [{k: rng.uniform(-1, 1, 2) for k in KEYS} for _ in range(4)]
    acts = []
    for pol in (original, policy):
        torch.manual_seed(123)  # stochastic acting paths (GMM mode draw, VAE prior) see the same noise
        pol.start_episode()
        acts.append(np.stack([pol(o) for o in obs]))
    assert np.array_equal(acts[0], acts[1])


def test_rnn_rollout_policy_equals_full_sequence_forward(reach):
    cfg = small("bc_rnn", "train.seq_length=6", "algo.rnn.horizon=3")
    store, sampler, algo = build(cfg, reach)
    algo.set_eval()
    b = sampler.sample()[:4]
    pol = RolloutPolicy(algo)
    pol.start_episode(num_envs=4)
    stepped = [pol({k: b[K.obs(k)][:, t].numpy() for k in KEYS}, batched_ob=True) for t in range(6)]
    stepped = np.stack(stepped, 1)
    # the hidden state is re-initialised every horizon=3 steps: equal to two full-sequence passes of 3 steps
    with torch.no_grad():
        full = torch.cat([algo.nets["policy"](b[:, :3]), algo.nets["policy"](b[:, 3:6])], 1).numpy()
        no_reset = algo.nets["policy"](b[:, :6]).numpy()
    assert np.allclose(stepped, full, atol=1e-5)
    assert not np.allclose(stepped[:, 3:], no_reset[:, 3:], atol=1e-4)
    # per-environment reset: env 1 restarts its episode, the others keep their state
    pol.start_episode(num_envs=4)
    for t in range(2):
        pol({k: b[K.obs(k)][:, t].numpy() for k in KEYS}, batched_ob=True)
    pol.reset_envs([False, True, False, False])
    t_per_env = torch.tensor([2, 0, 2, 2])  # env 1 sees the first observation of its new episode
    a = pol({k: b[K.obs(k)][torch.arange(4), t_per_env].numpy() for k in KEYS}, batched_ob=True)
    assert np.allclose(a[1], full[1, 0], atol=1e-5) and np.allclose(a[[0, 2, 3]], full[[0, 2, 3], 2], atol=1e-5)


def test_transformer_context_acting_matches_window_forward(reach):
    cfg = small("bc_transformer")
    store, sampler, algo = build(cfg, reach)
    algo.set_eval()
    b = sampler.gather(torch.arange(4))  # windows at the first steps: the context starts padded
    pol = RolloutPolicy(algo)
    pol.start_episode(num_envs=4)
    for t in range(3):
        a = pol({k: b[K.obs(k)][:, t].numpy() for k in KEYS}, batched_ob=True)
    with torch.no_grad():
        expected = algo.nets["policy"](b[:, :3])[:, -1].numpy()
    assert np.allclose(a, expected, atol=1e-5)


def test_robomimic_flag_dispatch(reach):
    cfg = config_factory("bc")
    assert bc_recipe_from_flags(cfg.algo) == "bc"
    cfg = small("bc", "algo.rnn.enabled=true", "algo.gmm.enabled=true", "train.seq_length=10")
    store = load_episode_store(reach, KEYS)
    algo = algo_factory("bc", cfg, store.obs_shapes(), store.ac_dim)
    assert algo.recipe_name == "bc_rnn_gmm" and algo.nets["policy"].recurrent


def test_bad_inputs(reach, tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'bc_rn'.*did you mean 'bc_rnn'"):
        compose("bc_rn")
    with pytest.raises(ConfigError, match="unknown config key 'train.batchsize'.*'train.batch_size'"):
        compose("bc", ["train.batchsize=3"])
    with pytest.raises(ConfigError, match="train.batch_size' must be int|train.batch_size must be a positive int"):
        compose("bc", ["train.batch_size=abc"])
    with pytest.raises(ConfigError, match="'algo.loss.l2_weight' must be float"):
        compose("bc", ["algo.loss.l2_weight=heavy"])
    with pytest.raises(ConfigError, match="'train.hdf5_normalize_obs' must be bool"):
        compose("bc", ["train.hdf5_normalize_obs=3"])
    with pytest.raises(ConfigError, match="rnn.horizon"):
        compose("bc_rnn", ["train.seq_length=2"])
    store = load_episode_store(reach, KEYS)
    with pytest.raises(ConfigError, match="observation key 'robot0_eef_pos'.*not in the dataset"):
        algo_factory("bc", compose("bc"), store.obs_shapes(), store.ac_dim)
    with pytest.raises(ConfigError, match="unknown argument 'l3_weight'.*did you mean 'l2_weight'"):
        algo_factory("bc", small("bc", "+losses.bc.l3_weight=1.0"), store.obs_shapes(), store.ac_dim)
    # wrong shapes: a checkpoint for 2-D actions into a recipe built for 3-D actions
    cfg = small("bc")
    algo = algo_factory("bc", cfg, store.obs_shapes(), store.ac_dim)
    other = algo_factory("bc", cfg, store.obs_shapes(), 3)
    with pytest.raises(ConfigError, match="do not fit recipe 'bc'"):
        other.deserialize(algo.serialize())
    # NaNs in a batch -> the loss term is named
    b = algo.process_batch_for_training(WindowSampler(store, 8).sample())
    b[K.obs("pos")][0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="loss 'bc'"):
        algo.train_on_batch(b, epoch=1)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(str(junk))
    torch.save({"nets": {}}, str(tmp_path / "robomimic.pth"))
    with pytest.raises(CheckpointError, match="not a modmimic checkpoint"):
        load_checkpoint(str(tmp_path / "robomimic.pth"))


@pytest.mark.parametrize("recipe", ["bc_gaussian", "bc_gmm"])
@pytest.mark.parametrize("bad", [K.obs("pos"), K.ACTION])
def test_nan_under_a_likelihood_head_is_reported_as_the_named_loss(recipe, bad, reach):
    """The heads' distributions skip torch's argument checks: a NaN observation (-> NaN mean / logits) or data action
    reaches the loss, and the step's finite check names it, before anything is stepped."""
    _, sampler, algo = build(small(recipe), reach)
    algo.set_train()
    before = {k: v.clone() for k, v in algo.nets.state_dict().items()}
    b = algo.process_batch_for_training(sampler.sample())
    b[bad][0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="loss 'nll'"):
        algo.train_on_batch(b, epoch=1)
    assert all(torch.equal(v, before[k]) for k, v in algo.nets.state_dict().items())


def test_process_batch_accepts_robomimic_dicts(reach):
    cfg = small("bc_rnn")
    store, sampler, algo = build(cfg, reach)
    td = sampler.sample()
    rm = {"obs": {k: td[K.obs(k)].numpy() for k in KEYS}, "actions": td[K.ACTION].numpy(),
          "rewards": td[K.REWARD][..., 0].numpy(), "dones": td[K.DONE][..., 0].numpy()}
    b = algo.process_batch_for_training(rm)
    assert torch.equal(b[K.ACTION], td[K.ACTION]) and torch.equal(b[K.obs("pos")], td[K.obs("pos")])
    assert torch.equal(b[K.DONE], td[K.DONE])
