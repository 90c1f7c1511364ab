"""Image observations: encoder components against closed forms, batched randomizers, the modality-aware
ObsEncoder, and image recipes end to end (train step, checkpoint, RolloutPolicy on an image observation)."""
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from modmimic import keys as K
from modmimic.algo import algo_factory
from modmimic.components.nets.core import ObsEncoder, encoder_spec, group_inputs, process_obs
from modmimic.components.nets.randomizers import (ColorRandomizer, CropRandomizer, GaussianNoiseRandomizer,
                                                  hsv_to_rgb, rgb_to_hsv)
from modmimic.components.nets.vision import (ResNet18Conv, ShallowConv, SpatialMeanPool, SpatialSoftmax,
                                             VisualCore)
from modmimic.config import compose, to_plain
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.build import with_required_returns
from modmimic.data.sampler import WindowSampler
from modmimic.data.synthetic import write_robomimic_hdf5
from modmimic.policy import RolloutPolicy, make_checkpoint, policy_from_checkpoint, save_checkpoint

# --- backbones -------------------------------------------------------------------------------------------------


def test_resnet18_shapes_and_size_match_robomimic():
    net = ResNet18Conv((3, 84, 84)).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 84, 84)).shape == (1, 512, 3, 3)  # robomimic: 84x84 -> 512x3x3
        assert net(torch.zeros(1, 3, 76, 76)).shape == (1, 512, 3, 3)  # after the default 76x76 crop
        assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 512, 1, 1)
    assert net.output_shape() == (512, 3, 3) and net.output_shape((3, 76, 76)) == (512, 3, 3)
    assert net.output_shape((3, 16, 16)) == (512, 1, 1)
    # torchvision resnet18 has 11,689,512 parameters, of which the classifier holds 512 * 1000 + 1000
    assert sum(p.numel() for p in net.parameters()) == 11_689_512 - 513_000


def test_resnet18_variants():
    x = torch.rand(2, 1, 24, 24)
    coord = ResNet18Conv((1, 24, 24), input_coord_conv=True)
    assert coord.conv1.weight.shape == (64, 3, 7, 7)  # 1 channel + 2 coordinate channels
    assert coord(x).shape == (2, 512, 1, 1)
    gn = ResNet18Conv((1, 24, 24), use_group_norm=True)
    norms = [m for m in gn.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules())
    assert all(m.num_groups == m.num_channels // 16 for m in norms)
    assert gn(x).shape == (2, 512, 1, 1)


def test_resnet18_pretrained_is_a_local_file(tmp_path):
    with pytest.raises(ValueError, match="never downloads"):
        ResNet18Conv((3, 24, 24), pretrained=True)
    with pytest.raises(ValueError, match="not found"):
        ResNet18Conv((3, 24, 24), pretrained=str(tmp_path / "nope.pth"))
    src = ResNet18Conv((3, 24, 24))
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # a full torchvision state_dict
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    loaded = ResNet18Conv((3, 24, 24), pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not a resnet18 state_dict"):
        ResNet18Conv((3, 24, 24), pretrained=str(bad))


def test_shallow_conv_shape():
    net = ShallowConv((3, 16, 16))
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 32, 4, 4) and net.output_shape() == (32, 4, 4)
    assert ShallowConv((3, 84, 84)).output_shape() == (32, 21, 21)


def test_shallow_conv_is_robomimics_and_group_norm_makes_keypoints_follow_the_image():
    """Without ``use_group_norm`` the layers are robomimic's (four convs, nothing else); with it a GroupNorm sits
    before each of the first three ReLUs. At initialisation the plain trunk's features are so small that a
    SpatialSoftmax over its 21x21 map is nearly uniform: keypoints hardly move when a bright square moves across
    the image (measured 1.8e-5); with GroupNorm they move ~30x more."""
    plain, gn = ShallowConv((3, 84, 84)), ShallowConv((3, 84, 84), use_group_norm=True)
    assert [type(m).__name__ for m in plain.nets] == ["Conv2d", "ReLU"] * 3 + ["Conv2d"]
    assert sum(p.numel() for p in plain.parameters()) == (3 * 49 * 64 + 64) + (64 * 32 + 32) + 2 * (32 * 9 * 32 + 32)
    assert [type(m).__name__ for m in gn.nets] == ["Conv2d", "GroupNorm", "ReLU"] * 3 + ["Conv2d"]
    x = torch.full((6, 3, 84, 84), 0.5)
    for i in range(6):
        x[i, 0, 10 + 10 * i:18 + 10 * i, 30:38] = 1.0
    moved = {}
    for flag in (False, True):
        torch.manual_seed(0)
        core = VisualCore((3, 84, 84), backbone_class="ShallowConv", backbone_kwargs={"use_group_norm": flag},
                          pool_class="SpatialSoftmax", pool_kwargs={"num_kp": 32}, feature_dimension=None)
        with torch.no_grad():
            moved[flag] = core(x).view(6, 32, 2).std(0).mean().item()
    assert moved[False] < 1e-4 and moved[True] > 10 * moved[False], moved


# --- pools -----------------------------------------------------------------------------------------------------


def test_spatial_softmax_hot_pixel_gives_its_coordinates():
    H, W = 5, 7
    pool = SpatialSoftmax((3, H, W), num_kp=None)
    x = torch.full((1, 3, H, W), -1e4)
    hot = [(0, 0), (2, 3), (4, 6)]
    for c, (r, col) in enumerate(hot):
        x[0, c, r, col] = 0.0
    kp = pool(x)
    assert kp.shape == (1, 3, 2)
    want = torch.tensor([[-1 + 2 * col / (W - 1), -1 + 2 * r / (H - 1)] for r, col in hot])
    assert torch.allclose(kp[0], want, atol=1e-6)


def test_spatial_softmax_uniform_map_variance_noise_temperature():
    H, W = 4, 6
    pool = SpatialSoftmax((2, H, W), num_kp=None, output_variance=True)
    out = pool(torch.zeros(1, 2, H, W))
    xs, ys = torch.linspace(-1, 1, W), torch.linspace(-1, 1, H)
    var_x, var_y = (xs ** 2).mean() - xs.mean() ** 2, (ys ** 2).mean() - ys.mean() ** 2
    want = torch.tensor([0.0, 0.0, var_x, 0.0, 0.0, var_y])
    assert out.shape == (1, 2, 6) and torch.allclose(out[0], want.expand(2, 6), atol=1e-6)
    # temperature: logits / T; two pixels with logits 0 and log(3) * T get weights 1/4, 3/4
    T = 2.0
    pool = SpatialSoftmax((1, 1, 2), num_kp=None, temperature=T, learnable_temperature=True)
    assert isinstance(pool.temperature, torch.nn.Parameter)
    x = torch.tensor([0.0, float(np.log(3.0)) * T]).view(1, 1, 1, 2)
    assert torch.allclose(pool(x)[0, 0, 0], torch.tensor(-0.25 + 0.75))
    # train-time keypoint noise only
    noisy = SpatialSoftmax((4, 3, 3), num_kp=8, noise_std=0.5)
    x = torch.randn(2, 4, 3, 3)
    noisy.eval()
    a, b = noisy(x), noisy(x)
    assert torch.equal(a, b)
    noisy.train()
    assert not torch.allclose(noisy(x), a)


def test_spatial_mean_pool_and_visual_core_defaults():
    x = torch.randn(2, 5, 3, 4)
    assert torch.equal(SpatialMeanPool((5, 3, 4))(x), x.mean(dim=(2, 3)))
    core = VisualCore((3, 16, 16), backbone_class="ShallowConv", pool_class=None, feature_dimension=None)
    assert core(torch.rand(2, 3, 16, 16)).shape == (2, 32 * 4 * 4) and core.output_shape() == (512,)
    with pytest.raises(ValueError, match="unknown kwargs"):
        VisualCore((3, 16, 16), backbone_kwargs={"pretrainde": False})
    with pytest.raises(ValueError, match="unknown pool_class"):
        VisualCore((3, 16, 16), backbone_class="ShallowConv", pool_class="Nope")


# --- randomizers -----------------------------------------------------------------------------------------------


def _window_offsets(img, crop):
    """Every (top, left) where ``crop`` equals a window of ``img`` ([C, H, W])."""
    ch, cw = crop.shape[-2:]
    return [(t, l) for t in range(img.shape[1] - ch + 1) for l in range(img.shape[2] - cw + 1)
            if torch.equal(img[:, t:t + ch, l:l + cw], crop)]


def test_crop_randomizer_train_random_eval_center():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 10, 12)
    r = CropRandomizer((3, 10, 12), crop_height=6, crop_width=7, num_crops=3)
    r.eval()
    out = r.forward_in(x)
    assert torch.equal(out, x[:, :, 2:8, 2:9])  # center: (10 - 6) // 2, (12 - 7) // 2
    assert torch.equal(r.forward_out(out), out)
    r.train()
    out = r.forward_in(x)
    assert out.shape == (12, 3, 6, 7)
    offsets = set()
    for i in range(4):
        for j in range(3):
            found = _window_offsets(x[i], out[i * 3 + j])
            assert len(found) == 1
            offsets.add(found[0])
    assert len(offsets) > 3  # random positions
    feats = torch.randn(12, 5)
    assert torch.allclose(r.forward_out(feats), feats.view(4, 3, 5).mean(1))


def test_crop_randomizer_every_position_reachable_and_pos_enc():
    torch.manual_seed(0)
    x = torch.arange(5 * 5, dtype=torch.float32).view(1, 1, 5, 5).expand(400, 1, 5, 5)
    r = CropRandomizer((1, 5, 5), crop_height=3, crop_width=3, pos_enc=True).train()
    out = r.forward_in(x)
    assert out.shape == (400, 3, 3, 3)
    tops = (out[:, 0, 0, 0] // 5).long()
    lefts = (out[:, 0, 0, 0] % 5).long()
    assert set(tops.tolist()) == {0, 1, 2} and set(lefts.tolist()) == {0, 1, 2}
    # the position channels are row / H and column / W of the uncropped image at the crop's pixels
    for i in range(5):
        t, l = int(tops[i]), int(lefts[i])
        rows = (t + torch.arange(3)).float() / 5
        cols = (l + torch.arange(3)).float() / 5
        assert torch.allclose(out[i, 1], rows[:, None].expand(3, 3))
        assert torch.allclose(out[i, 2], cols[None, :].expand(3, 3))
    assert r.output_shape_in() == (3, 3, 3)


def test_noise_and_color_randomizers():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8)
    g = GaussianNoiseRandomizer((3, 8, 8), noise_mean=0.5, noise_std=0.0, limits=[0.0, 1.2], num_samples=2)
    assert torch.equal(g.eval().forward_in(x), x)
    assert torch.allclose(g.train().forward_in(x), (x + 0.5).clamp(0, 1.2).repeat_interleave(2, 0))
    c = ColorRandomizer((3, 8, 8))
    assert torch.equal(c.eval().forward_in(x), x)
    y = c.train().forward_in(x)
    assert y.shape == x.shape and not torch.allclose(y, x) and y.min() >= 0 and y.max() <= 1
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    # brightness alone scales each image by one factor in [0.7, 1.3]
    b = ColorRandomizer((3, 8, 8), brightness=0.3, contrast=0, saturation=0, hue=0).train()
    xs = torch.full((64, 3, 2, 2), 0.5)
    f = b.forward_in(xs)[:, 0, 0, 0] / 0.5
    assert f.min() >= 0.7 - 1e-6 and f.max() <= 1.3 + 1e-6 and f.std() > 0.05


def _rgb_spec(**block):
    base = to_plain(compose("bc").observation)
    rgb = base["encoder"]["rgb"]
    rgb["core_kwargs"]["backbone_class"] = "ShallowConv"
    rgb["core_kwargs"]["pool_kwargs"]["num_kp"] = 4
    rgb["core_kwargs"]["feature_dimension"] = 8
    rgb.update(block)
    base["modalities"]["obs"] = {"low_dim": ["pos"], "rgb": ["image", "wrist"], "depth": [], "scan": []}
    return encoder_spec(base)


def test_low_dim_encoder_concatenates_in_key_order_and_names_a_missing_key():
    enc = ObsEncoder(group_inputs({"vel": (2,), "pos": (3,)}))
    pos, vel = torch.randn(4, 3), torch.randn(4, 2)
    td = TensorDict({K.OBS: {"vel": vel, "pos": pos}}, [4])
    assert torch.equal(enc(td), torch.cat([pos, vel], -1))  # robomimic's order: keys sorted
    del td[K.obs("vel")]
    with pytest.raises(KeyError, match="vel"):
        enc(td)
    with pytest.raises(KeyError, match="observation"):
        enc(TensorDict({"goal": {"pos": pos}}, [4]))


def test_chained_randomizers_run_in_order():
    seen = []
    spec = _rgb_spec(obs_randomizer_class=["GaussianNoiseRandomizer", "CropRandomizer"],
                     obs_randomizer_kwargs=[{"noise_mean": 0.5, "noise_std": 0.0, "num_samples": 3},
                                            {"crop_height": 12, "crop_width": 12, "num_crops": 2, "pos_enc": True}])
    enc = ObsEncoder(group_inputs({"image": (16, 16, 3)}), spec).train()
    ke = enc.key_encoders["observation/image"]
    ke.core.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    img = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    out = enc(TensorDict({K.OBS: {"image": img}}, [2]))
    assert out.shape == (2, 8)
    x = seen[0]
    assert x.shape == (2 * 3 * 2, 5, 12, 12)  # noise (x3) first, then crops (x2) with 2 position channels
    assert torch.allclose(x[:, :3], torch.full_like(x[:, :3], 0.5))  # noise on the image ...
    assert x[:, 3:].min() < 0.5 and x[:, 3:].max() < 1.0  # ... but not on the position channels added after it
    # reversed: the position channels get the noise too
    seen.clear()
    spec = _rgb_spec(obs_randomizer_class=["CropRandomizer", "GaussianNoiseRandomizer"],
                     obs_randomizer_kwargs=[{"crop_height": 12, "crop_width": 12, "pos_enc": True},
                                            {"noise_mean": 0.5, "noise_std": 0.0}])
    enc = ObsEncoder(group_inputs({"image": (16, 16, 3)}), spec).train()
    enc.key_encoders["observation/image"].core.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    enc(TensorDict({K.OBS: {"image": img}}, [2]))
    assert seen[0][:, 3:].min() >= 0.5


def test_uint8_to_float_is_exact():
    vals = torch.arange(256, dtype=torch.uint8)
    x = vals[torch.randperm(256)].view(4, 4, 4, 4)[..., :3].contiguous()  # [N, H, W, C]
    y = process_obs(x, "rgb")
    assert y.dtype == torch.float32 and y.shape == (4, 3, 4, 4)
    assert torch.equal(y, x.permute(0, 3, 1, 2).float() / 255.0)
    assert torch.equal(process_obs(vals.view(1, 16, 16, 1), "rgb")[0, 0].flatten(), vals.float() / 255.0)
    d = torch.rand(2, 4, 5, 1) * 3.0  # metric depth: unscaled, unclipped
    assert torch.equal(process_obs(d, "depth"), d.permute(0, 3, 1, 2))


def test_obs_encoder_by_modality_and_share_net_from():
    spec = _rgb_spec()
    enc = ObsEncoder(group_inputs({"pos": (2,), "image": (16, 16, 3), "wrist": (16, 16, 3)},
                                  {"image": (16, 16, 3)}), spec)
    assert enc.output_dim == 8 * 3 + 2 and enc.modalities == ["rgb", "low_dim", "rgb", "rgb"]
    cores = [enc.key_encoders[n].core for n in ("observation/image", "observation/wrist", "goal/image")]
    assert cores[0] is not cores[1] and cores[0] is not cores[2]  # goal images get their own core (robomimic)
    td = TensorDict({K.OBS: {"pos": torch.randn(2, 5, 2), "image": torch.randint(0, 255, (2, 5, 16, 16, 3),
                                                                                      dtype=torch.uint8),
                             "wrist": torch.randint(0, 255, (2, 5, 16, 16, 3), dtype=torch.uint8)},
                     K.GOAL: {"image": torch.randint(0, 255, (2, 5, 16, 16, 3), dtype=torch.uint8)}}, [2, 5])
    out = enc(td)
    assert out.shape == (2, 5, 26)
    assert torch.equal(out[..., 8:10], td[K.OBS, "pos"])  # the low-dim key passes through unchanged
    assert (out[..., :8] >= 0).all()  # ReLU after the VisualCore's linear layer
    n_core = sum(p.numel() for p in cores[0].parameters())
    shared = ObsEncoder(group_inputs({"image": (16, 16, 3), "wrist": (16, 16, 3)}),
                        _rgb_spec(share_net_from={"wrist": "image"}))
    assert shared.key_encoders["observation/wrist"].core is shared.key_encoders["observation/image"].core
    assert sum(p.numel() for p in shared.parameters()) == n_core
    with pytest.raises(ValueError, match="not an earlier rgb key"):
        ObsEncoder(group_inputs({"image": (16, 16, 3), "wrist": (16, 16, 3)}),
                   _rgb_spec(share_net_from={"image": "wrist"}))
    with pytest.raises(ValueError, match="list an image key"):
        ObsEncoder(group_inputs({"image": (16, 16, 3)}))


def test_q_ensemble_members_have_their_own_image_encoders():
    from modmimic.components.nets.value import q_ensemble

    q = q_ensemble({"pos": (2,), "image": (16, 16, 3)}, 2, layer_dims=(8,), n=3, encoder=_rgb_spec())
    cores = [m.encoder.key_encoders["observation/image"].core for m in q.members]
    assert len({id(c) for c in cores}) == 3  # robomimic: independent critics, each with its own encoder
    td = TensorDict({K.OBS: {"pos": torch.randn(4, 2), "image": torch.randint(0, 255, (4, 16, 16, 3),
                                                                               dtype=torch.uint8)}}, [4])
    a = torch.rand(4, 5, 2)  # candidate actions per state
    out = q(td, a)
    assert out.shape == (3, 4, 5, 1) and torch.allclose(q.q1(td, a), out[0])
    out[1].sum().backward()
    grads = [any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.parameters()) for m in q.members]
    assert grads == [False, True, False]  # a member's loss reaches only its own encoder and MLP


def test_default_rgb_encoder_is_robomimics():
    obs = to_plain(compose("bc").observation)
    obs["modalities"]["obs"]["rgb"] = ["agentview_image"]
    enc = ObsEncoder(group_inputs({"agentview_image": (84, 84, 3)}), encoder_spec(obs))
    ke = enc.key_encoders["observation/agentview_image"]
    assert isinstance(ke.core.backbone, ResNet18Conv) and isinstance(ke.core.pool, SpatialSoftmax)
    assert ke.core.pool.num_kp == 32 and ke.core.linear.in_features == 64 and ke.core.linear.out_features == 64
    assert isinstance(ke.activation, torch.nn.ReLU) and len(ke.randomizers) == 0 and enc.output_dim == 64


# --- recipes end to end ----------------------------------------------------------------------------------------

IMG = 16


def _image_demos(n=4, T=12, seed=0):
    rng = np.random.default_rng(seed)
    demos = []
    for _ in range(n):
        pos = rng.uniform(-1, 1, (T + 1, 2))
        img = np.zeros((T + 1, IMG, IMG, 3), np.uint8)
        rows = ((pos[:, 0] + 1) / 2 * (IMG - 1)).astype(int)
        cols = ((pos[:, 1] + 1) / 2 * (IMG - 1)).astype(int)
        img[np.arange(T + 1), rows, cols] = 255
        obs = {"image": img[:-1], "pos": pos[:-1]}
        nxt = {"image": img[1:], "pos": pos[1:]}
        dones = np.zeros(T, np.int64)
        dones[-1] = 1
        demos.append({"obs": obs, "next_obs": nxt, "actions": np.clip(-pos[:-1], -1, 1),
                      "rewards": (np.arange(T) == T - 1).astype(float), "dones": dones})
    return demos


@pytest.fixture(scope="module")
def image_hdf5(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("img") / "img.hdf5")
    write_robomimic_hdf5(path, _image_demos())
    return path


IMAGE_OVERRIDES = ["observation.modalities.obs.low_dim=[pos]", "observation.modalities.obs.rgb=[image]",
                   "observation.encoder.rgb.core_kwargs.backbone_class=ShallowConv",
                   "observation.encoder.rgb.core_kwargs.pool_kwargs.num_kp=4",
                   "observation.encoder.rgb.core_kwargs.feature_dimension=8",
                   "observation.encoder.rgb.obs_randomizer_class=CropRandomizer",
                   "observation.encoder.rgb.obs_randomizer_kwargs.crop_height=12",
                   "observation.encoder.rgb.obs_randomizer_kwargs.crop_width=12",
                   "train.batch_size=4", "experiment.rollout.enabled=false"]


@pytest.mark.parametrize("recipe", ["bc", "bc_rnn", "iql"])
def test_image_recipe_trains_checkpoints_and_acts(recipe, image_hdf5, tiny, tmp_path):
    extra = ["train.seq_length=3", "algo.rnn.horizon=3"] if recipe == "bc_rnn" else []
    cfg = compose(recipe, tiny(recipe) + IMAGE_OVERRIDES + extra)
    torch.manual_seed(0)
    store = load_episode_store(image_hdf5, ["image", "pos"], load_next_obs=cfg.train.hdf5_load_next_obs)
    assert store.obs_shapes()["image"] == (IMG, IMG, 3) and store.uint8[K.obs("image")].dtype == torch.uint8
    sampler = WindowSampler(store, cfg.train.batch_size, seq_length=cfg.train.seq_length, seed=0)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    convs = [m for m in algo.nets.modules() if isinstance(m, ShallowConv)]
    assert convs  # every network got a visual core
    before = {n: p.detach().clone() for n, p in algo.nets.named_parameters()}
    algo.set_train()
    batch = sampler.sample()
    assert batch[K.OBS, "image"].dtype == torch.uint8
    info = algo.log_info(algo.train_on_batch(algo.process_batch_for_training(batch), epoch=1))
    assert info and all(np.isfinite(v) for k, v in info.items() if "Loss" in k), info
    moved = [n for n, p in algo.nets.named_parameters() if "backbone" in n and not torch.equal(p, before[n])]
    assert moved, "no visual backbone parameter changed in a train step"
    # checkpoint round trip, then act on a raw image observation (uint8 HWC, no batch dim)
    ck = str(tmp_path / "model.pth")
    save_checkpoint(ck, make_checkpoint(algo, env_meta=store.env_meta))
    policy, _ = policy_from_checkpoint(ckpt_path=ck)
    assert isinstance(policy, RolloutPolicy)
    ob = {"image": store.uint8[K.obs("image")][0].numpy(), "pos": np.array([0.1, -0.2])}
    policy.start_episode()
    a = policy(ob)
    assert a.shape == (2,) and np.isfinite(a).all()
    algo.set_eval()
    algo.reset()
    td = {"image": torch.from_numpy(ob["image"])[None], "pos": torch.tensor([[0.1, -0.2]], dtype=torch.float32)}
    assert np.allclose(a, algo.get_action(td).numpy()[0], atol=1e-6)  # the same network, center crop in eval


SUBGOAL_LOW_DIM = {"gl": "observation.modalities.subgoal", "gl_vae": "observation.modalities.subgoal",
                   "hbc": "observation.planner.modalities.subgoal",
                   "iris": "observation.value_planner.planner.modalities.subgoal"}


def image_config(recipe, tiny):
    """``recipe`` observing the 16x16 image (plus goal images for goal-conditioned runs) and ``pos``; planners
    predict the low-dim ``pos`` subgoal."""
    ov = tiny(recipe) + IMAGE_OVERRIDES
    if "rnn" in recipe:
        ov += ["train.seq_length=3", "algo.rnn.horizon=3"]
    if recipe in ("hbc", "iris"):
        ov += ["train.seq_length=3", "algo.actor.rnn.horizon=3", "algo.planner.subgoal_horizon=3"
               if recipe == "hbc" else "algo.value_planner.planner.subgoal_horizon=3"]
    if recipe.startswith("bc_transformer"):  # (diffusion_transformer's transformer is its denoiser)
        ov += ["algo.transformer.context_length=2", "train.frame_stack=2"]
    if recipe in SUBGOAL_LOW_DIM:
        ov += [f"{SUBGOAL_LOW_DIM[recipe]}.low_dim=[pos]", f"{SUBGOAL_LOW_DIM[recipe]}.rgb=[]"]
    return compose(recipe, ov)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(set(__import__("modmimic.config", fromlist=["x"]).list_recipes())))
def test_every_recipe_takes_a_train_step_on_images(recipe, image_hdf5, tiny):
    from modmimic.config import all_obs_keys

    cfg = image_config(recipe, tiny)
    torch.manual_seed(0)
    store = load_episode_store(image_hdf5, all_obs_keys(cfg), load_next_obs=True)
    store = with_required_returns(cfg, store)  # Cal-QL's Monte-Carlo returns, as the training loop adds them
    sampler = WindowSampler(store, cfg.train.batch_size, seq_length=cfg.train.seq_length,
                            frame_stack=cfg.train.frame_stack, seed=0, goal_mode=cfg.train.goal_mode)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    assert any(isinstance(m, ShallowConv) for m in algo.nets.modules())
    algo.set_train()
    info = algo.log_info(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1))
    assert all(np.isfinite(v) for k, v in info.items() if "Loss" in k), info
