"""Image observations for the chunking policies (Diffusion Policy with the UNet and the transformer denoiser, ACT):
the recipe's encoder spec reaches their networks (robomimic's VisualCore per rgb key), Diffusion Policy encodes the
To frames of a window in one encoder call and defaults to GroupNorm in its ResNet, ACT turns image keys into tokens;
a few training steps move the conv weights, a checkpoint acts through RolloutPolicy on a raw uint8 HWC observation,
the image changes the action, and an image Diffusion Policy run resumes bit for bit."""
import os

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from test_trainer import assert_same_state
from test_vision import IMAGE_OVERRIDES, IMG, image_hdf5  # noqa: F401 (fixture)

from modmimic import keys as K
from modmimic.algo import algo_factory
from modmimic.components.nets.core import encoder_spec
from modmimic.components.nets.diffusion import diffusion_policy
from modmimic.components.nets.vision import ResNet18Conv, ShallowConv
from modmimic.config import compose, to_plain
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler
from modmimic.policy import (RolloutPolicy, load_checkpoint, make_checkpoint, policy_from_checkpoint,
                             save_checkpoint)
from modmimic.trainer import resume_config, train

KEYS = ["image", "pos"]
DIFFUSION = ["algo.optim_params.policy.learning_rate.warmup_steps=0", "algo.horizon.prediction_horizon=4",
             "algo.horizon.action_horizon=2", "algo.ddpm.num_inference_timesteps=5"]
SMALL = {
    "diffusion_policy": [*DIFFUSION, "algo.unet.down_dims=[16,32]", "algo.unet.diffusion_step_embed_dim=16"],
    "diffusion_transformer": [*DIFFUSION, "algo.transformer.n_emb=16", "algo.transformer.n_layer=1",
                              "algo.transformer.n_head=2"],
    "act": ["algo.act.embed_dim=16", "algo.act.num_heads=2", "algo.act.hidden_dim=32", "algo.act.num_layers=1",
            "algo.act.vae.num_layers=1", "algo.act.vae.latent_dim=4", "algo.act.chunk_size=4"],
}
RECIPES = sorted(SMALL)
LR = ["algo.optim_params.policy.learning_rate.initial=1e-3"]  # no warm-up: a few steps move the weights visibly


def config(recipe, *extra):
    return compose(recipe, [*IMAGE_OVERRIDES, *SMALL[recipe], *LR, *extra])


def build(cfg, path, seed=0):
    torch.manual_seed(seed)
    store = load_episode_store(path, KEYS, load_next_obs=False)
    sampler = WindowSampler(store, cfg.train.batch_size, seq_length=cfg.train.seq_length,
                            frame_stack=cfg.train.frame_stack, seed=seed)
    return store, sampler, algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)


def convs(net):
    return [m for m in net.modules() if isinstance(m, ShallowConv)]


def conv_weights(net):
    """The 4 conv kernels of the ShallowConv (its last conv's bias gets no gradient: a per-map constant before the
    spatial softmax cancels)."""
    return [m.weight.detach().clone() for m in convs(net)[0].modules() if isinstance(m, torch.nn.Conv2d)]


def image(store, t):
    return store.uint8[K.obs("image")][t].numpy()


def act_on(policy, obs, seed=7):
    """Actions of a fresh episode over ``obs`` (raw observation dicts), with a fixed noise seed (diffusion)."""
    torch.manual_seed(seed)
    policy.start_episode()
    return np.stack([policy(o) for o in obs])


@pytest.mark.parametrize("recipe", RECIPES)
def test_image_chunking_recipe_trains_checkpoints_and_acts(recipe, image_hdf5, tmp_path):  # noqa: F811
    store, sampler, algo = build(config(recipe), image_hdf5)
    net = algo.nets["policy"]
    assert len(convs(net)) == 1 and store.uint8[K.obs("image")].dtype == torch.uint8
    conv_before = conv_weights(net)
    algo.set_train()
    for _ in range(3):
        info = algo.log_info(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1))
        assert np.isfinite(info["Loss"]), info
    moved = [not torch.equal(a, b) for a, b in zip(conv_before, conv_weights(net))]
    assert len(moved) == 4 and all(moved), f"train steps left conv kernels of the image encoder unchanged: {moved}"
    # checkpoint -> policy_from_checkpoint -> RolloutPolicy on raw uint8 HWC observations (no batch dim)
    ck = str(tmp_path / "model.pth")
    save_checkpoint(ck, make_checkpoint(algo, env_meta=store.env_meta))
    policy, _ = policy_from_checkpoint(ckpt_path=ck)
    assert isinstance(policy, RolloutPolicy)
    pos = np.array([0.1, -0.2])
    obs = [{"image": image(store, t), "pos": pos} for t in range(3)]
    a = act_on(policy, obs)
    assert a.shape == (3, 2) and np.isfinite(a).all() and obs[0]["image"].shape == (IMG, IMG, 3)
    algo.set_eval()
    assert np.allclose(a, act_on(RolloutPolicy(algo), obs), atol=1e-6)  # the saved networks are the trained ones
    # the image reaches the action: acting is deterministic for a seed, and the same proprioception with other
    # images gives other actions (freshly initialised networks are weakly image-sensitive: the diffusion
    # transformer's 0.02-std weights make its actions move by ~1e-7 here, the UNet's by ~5e-3, ACT's by ~1e-4)
    assert np.array_equal(a, act_on(policy, obs))
    b = act_on(policy, [{"image": 255 - o["image"], "pos": pos} for o in obs])
    assert not np.array_equal(a, b), "the action does not depend on the image"


def test_diffusion_policy_encodes_the_window_in_one_call_per_image_key(image_hdf5):  # noqa: F811
    """The To frames of every window go through the conv once, as one [B * To, C, h, w] batch (time folded into the
    batch), and the condition of each step is that step's features."""
    cfg = config("diffusion_policy")
    _, sampler, algo = build(cfg, image_hdf5)
    net = algo.nets["policy"]
    seen = []
    convs(net)[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    algo.set_train()
    batch = algo.process_batch_for_training(sampler.sample())
    B, To = cfg.train.batch_size, cfg.algo.horizon.observation_horizon
    assert batch[K.obs("image")].shape == (B, To, IMG, IMG, 3)
    algo.train_on_batch(batch, epoch=1)
    assert seen == [(B * To, 3, 12, 12)]  # one call, 12x12 random crops
    net.eval()  # center crops: deterministic features
    cond = net.condition(batch)
    assert cond.shape == (B, To, net.encoder.output_dim) and net.encoder.output_dim == 8 + 2
    for t in range(To):  # step t's condition is step t's frame encoded alone
        step = TensorDict({K.OBS: {k: batch[K.obs(k)][:, t] for k in KEYS}}, [B])
        assert torch.allclose(cond[:, t], net.encoder(step), atol=1e-6)
    assert torch.equal(cond[..., 8:], batch[K.obs("pos")])  # sorted keys: image features, then pos


def test_diffusion_policy_resnet_uses_group_norm_by_default():
    """robomimic's DP replaces every BatchNorm of its image encoder by GroupNorm (16 channels per group); the
    diffusion recipes' rgb and depth defaults do the same, BC keeps BatchNorm, and the option can be turned off."""
    def gn(cfg, mod="rgb"):
        return cfg.observation.encoder[mod].core_kwargs.backbone_kwargs.use_group_norm

    dp = compose("diffusion_policy", ["observation.modalities.obs.rgb=[image]"])
    assert gn(dp) and gn(dp, "depth") and gn(compose("diffusion_transformer"))
    assert not gn(compose("bc"))
    off = "observation.encoder.rgb.core_kwargs.backbone_kwargs.use_group_norm=false"
    assert not gn(compose("diffusion_policy", [off]))
    obs = to_plain(dp.observation)
    torch.manual_seed(0)
    net = diffusion_policy({"image": (32, 32, 3)}, 2, horizon={"prediction_horizon": 4},
                           unet={"down_dims": [16, 32], "diffusion_step_embed_dim": 16}, ddpm={"enabled": True},
                           encoder=encoder_spec(obs))
    (r,) = [m for m in net.modules() if isinstance(m, ResNet18Conv)]  # the default rgb core: robomimic's ResNet18
    norms = [m for m in r.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
    assert len(norms) == 20 and all(isinstance(m, torch.nn.GroupNorm) for m in norms)
    assert all(m.num_groups == m.num_channels // 16 for m in norms)
    assert not any(b.numel() for b in r.buffers())  # no running statistics for the EMA to average


def test_act_image_keys_become_tokens(image_hdf5):  # noqa: F811
    """Default: one token per image key (the VisualCore's feature); an unflattened core gives one token per cell of
    its feature map; the posterior sees only the low-dim keys, and nothing but actions without them."""
    _, sampler, algo = build(config("act"), image_hdf5)
    net = algo.nets["policy"]
    batch = algo.process_batch_for_training(sampler.sample())
    assert net.obs_tokens(batch).shape == (4, 2, 16) and net.token_pos.num_embeddings == 3
    assert net.obs_concat.in_keys == [K.obs("pos")]  # the "joints" token: images never enter the posterior
    # feature map tokens: ShallowConv on 12x12 crops -> [32, 3, 3] -> 9 tokens of 32 channels
    fm = ["observation.encoder.rgb.core_kwargs.pool_class=null", "observation.encoder.rgb.core_kwargs.flatten=false",
          "observation.encoder.rgb.core_kwargs.feature_dimension=null"]
    _, sampler, algo = build(config("act", *fm), image_hdf5)
    net = algo.nets["policy"]
    assert net.token_shapes == [(9, 32), (1, 2)] and net.token_pos.num_embeddings == 1 + 10
    net.eval()
    batch = algo.process_batch_for_training(sampler.sample())
    tokens = net.obs_tokens(batch)
    assert tokens.shape == (4, 10, 16)
    fmap = net.obs_encoder.key_encoders["observation/image"](batch[K.obs("image")])  # [B, 32 * 9]
    cell = fmap.view(4, 32, 9)[:, :, 4]  # the centre cell's 32 channels
    assert torch.allclose(tokens[:, 4], net.obs_proj[0](cell), atol=1e-6)
    algo.set_train()
    before = conv_weights(net)
    algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    assert all(not torch.equal(a, b) for a, b in zip(before, conv_weights(net)))
    # images only: the posterior is [CLS, actions]
    _, sampler, algo = build(config("act", "observation.modalities.obs.low_dim=[]"), image_hdf5)
    net = algo.nets["policy"]
    assert net.obs_concat is None and net.vae_obs_proj is None
    algo.set_train()
    info = algo.log_info(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1))
    assert np.isfinite(info["Loss"])
    mu, _ = net.eval().posterior(batch, batch[K.ACTION], batch[K.MASK])
    assert mu.shape == (4, 4)


def test_image_diffusion_policy_resumes_bit_exact(image_hdf5, tmp_path):  # noqa: F811
    """2 epochs == 1 epoch (stopped) + resume, for an image Diffusion Policy (random crops, EMA of the encoder)."""
    common = [f"train.data={image_hdf5}", f"train.output_dir={tmp_path}", "experiment.epoch_every_n_steps=2",
              "experiment.validate=false", "experiment.logging.log_tb=false", "train.num_epochs=2"]
    common = [*IMAGE_OVERRIDES, *SMALL["diffusion_policy"], *common]
    full = train(compose("diffusion_policy", common + ["experiment.name=full"]), progress=False)
    part = train(compose("diffusion_policy", common + ["experiment.name=part", "train.stop_after_epoch=1"]),
                 progress=False)
    assert part["epoch"] == 1
    resumed = train(resume_config(part["run_dir"], ["train.stop_after_epoch=null"]), progress=False)
    assert resumed["epoch"] == 2
    a = load_checkpoint(os.path.join(full["run_dir"], "models", "last.pth"))
    b = load_checkpoint(os.path.join(resumed["run_dir"], "models", "last.pth"))
    assert any(k.startswith("ema_policy.encoder.") and "backbone" in k for k in a["model"]["nets"]), \
        "no image encoder in the checkpoint"
    assert_same_state(a["model"], b["model"])
    assert torch.equal(a["trainer_state"]["rng"]["torch"], b["trainer_state"]["rng"]["torch"])
