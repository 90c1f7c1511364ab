"""Flow policy: the flow-matching loss against its closed form, Euler sampling (one step recovers a linear target
exactly), and the recipe through the Algo API (UNet and transformer denoisers, EMA acting, checkpoint round trip)."""
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from conftest import build_from_reach
from modmimic import keys as K
from modmimic.algo import algo_factory
from modmimic.components.losses.flow import flow_matching
from modmimic.components.nets.diffusion import DiffusionPolicy
from modmimic.components.nets.flow import FlowSchedule
from modmimic.config import ConfigError, compose
from modmimic.data.hdf5 import load_episode_store
from test_diffusion import assert_checkpoint_acts_with_ema  # noqa: E402

KEYS = ["pos", "goal_pos", "vel"]
B, TO, TP, A, D = 5, 2, 4, 3, 2


class Features(nn.Module):
    """An observation "encoder" returning the ``[B, To, D]`` window of key ``x`` as is."""

    in_keys = [K.obs("x")]

    def forward(self, td):
        return td[K.obs("x")]


class LinearTarget(nn.Module):
    """The chunk is a linear function of the observations: ``x_1 = W . flatten(obs)``, shape ``[B, Tp, A]``."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(TO * D, TP * A, generator=g, dtype=torch.float64) * 0.2

    def target(self, cond):
        return (cond.reshape(cond.shape[0], -1) @ self.W).view(-1, TP, A)


class OracleVelocity(LinearTarget):
    """The optimal velocity when the data given the observations is the single chunk ``x_1``:
    ``(x_1 - x_t) / (1 - t)`` at flow time ``t`` (the denoiser gets ``t * time_scale``)."""

    def __init__(self, time_scale, seed=0):
        super().__init__(seed)
        self.time_scale = time_scale

    def check_horizon(self, Tp):
        pass

    def forward(self, x, t, cond):
        t = torch.as_tensor(t, dtype=x.dtype) / self.time_scale
        t = t.view(-1, *([1] * (x.dim() - 1))) if t.dim() else t
        return (self.target(cond) - x) / (1.0 - t)


def policy_with(denoiser, steps=1, time_scale=100.0, clip_sample=False):
    return DiffusionPolicy(Features(), denoiser, FlowSchedule(steps, time_scale, clip_sample), TO, TP, A).double()


def obs_window(seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({K.OBS: {"x": torch.randn(B, TO, D, generator=g, dtype=torch.float64)}}, batch_size=[B])


# --- loss ----------------------------------------------------------------------------------------------------------

def test_flow_matching_loss_is_the_closed_form():
    """With the draws replayed (noise first, then t), the loss is mean((v(x_t, 100 t) - (x_1 - noise))^2)."""
    class Affine(nn.Module):  # any fixed velocity field of (x, t, cond)
        def check_horizon(self, Tp):
            pass

        def forward(self, x, t, cond):
            return 0.5 * x - 0.01 * t.view(-1, 1, 1) + cond.sum((1, 2)).view(-1, 1, 1)

    policy = policy_with(Affine())
    batch = obs_window()
    x1 = torch.rand(B, TP, A, dtype=torch.float64) * 2 - 1
    batch[K.ACTION] = x1
    torch.manual_seed(3)
    out = flow_matching(batch, policy)
    torch.manual_seed(3)
    noise = torch.randn(B, TP, A, dtype=torch.float64)
    t = torch.rand(B, dtype=torch.float64)
    xt = (1 - t)[:, None, None] * noise + t[:, None, None] * x1
    v = 0.5 * xt - 0.01 * (100.0 * t)[:, None, None] + batch[K.obs("x")].sum((1, 2))[:, None, None]
    expected = ((v - (x1 - noise)) ** 2).mean()
    assert torch.allclose(out["loss"], expected, rtol=1e-12, atol=0) and out["loss"].requires_grad is False
    # the optimal velocity of a deterministic target has zero loss: (x_1 - x_t) / (1 - t) = x_1 - noise
    oracle = OracleVelocity(100.0)
    batch[K.ACTION] = oracle.target(batch[K.obs("x")])
    assert flow_matching(batch, policy_with(oracle))["loss"] < 1e-20


def test_flow_matching_gradient_reaches_the_denoiser():
    lin = nn.Linear(A, A).double()

    class Net(nn.Module):
        def check_horizon(self, Tp):
            pass

        def forward(self, x, t, cond):
            return lin(x)

    batch = obs_window()
    batch[K.ACTION] = torch.zeros(B, TP, A, dtype=torch.float64)
    flow_matching(batch, policy_with(Net()))["loss"].backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


# --- sampling ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 4, 10])
def test_euler_sampling_recovers_a_linear_target_exactly(steps):
    """The straight path's velocity is constant: any number of Euler steps, one included, lands on x_1."""
    oracle = OracleVelocity(100.0)
    batch = obs_window()
    chunk = policy_with(oracle, steps=steps).predict_chunk(batch)
    target = oracle.target(batch[K.obs("x")])
    assert chunk.shape == (B, TP, A)
    assert torch.allclose(chunk, target, rtol=0, atol=1e-12)


def test_flow_schedule_times_steps_and_clipping():
    s = FlowSchedule(4, time_scale=100.0)
    assert s.timesteps() == [0.0, 25.0, 50.0, 75.0]
    x, v = torch.zeros(1, 2, 1), torch.full((1, 2, 1), 8.0)
    assert torch.equal(s.step(v, 0.0, x), torch.full((1, 2, 1), 2.0))  # dt = 1/4, no clipping before the end
    assert torch.equal(s.step(v, 75.0, x), torch.ones(1, 2, 1))  # the last step clips to [-1, 1]
    assert torch.equal(FlowSchedule(4, clip_sample=False).step(v, 75.0, x), torch.full((1, 2, 1), 2.0))
    assert torch.equal(s.net_time(torch.tensor([0.5])), torch.tensor([50.0]))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="algo.flow.steps"):
            FlowSchedule(bad)
    with pytest.raises(ValueError, match="time_scale"):
        FlowSchedule(4, time_scale=0.0)


# --- the recipe ----------------------------------------------------------------------------------------------------

def small(*extra):
    return compose("flow_policy", [f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]",
                                   "algo.unet.down_dims=[16,32]", "algo.unet.diffusion_step_embed_dim=16",
                                   "algo.transformer.n_emb=16",
                                   "algo.transformer.n_layer=1", "algo.transformer.n_head=2", "train.batch_size=8",
                                   "algo.horizon.prediction_horizon=4", "algo.horizon.action_horizon=2",
                                   "algo.flow.steps=3", *extra])


def build(cfg, path, seed=0):
    return build_from_reach(cfg, path, KEYS, seed)


def test_recipe_shares_diffusion_policys_networks(reach_hdf5):
    """Same encoder and UNet as diffusion_policy (identical initial weights from the same seed), another schedule."""
    _, _, flow = build(small(), reach_hdf5)
    dp_cfg = compose("diffusion_policy", [f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]",
                                          "algo.unet.down_dims=[16,32]", "algo.unet.diffusion_step_embed_dim=16",
                                          "algo.horizon.prediction_horizon=4", "algo.horizon.action_horizon=2"])
    torch.manual_seed(0)
    store = load_episode_store(str(reach_hdf5), KEYS, load_next_obs=False)
    dp = algo_factory("diffusion_policy", dp_cfg, store.obs_shapes(), store.ac_dim)
    a, b = flow.nets["policy"].state_dict(), dp.nets["policy"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(flow.nets["policy"].schedule, FlowSchedule) and flow.nets["policy"].schedule.steps == 3
    assert list(flow.nets) == ["policy", "ema_policy"]


@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
def test_recipe_trains_checkpoints_and_acts_with_ema_weights(denoiser, reach_hdf5, tmp_path):
    store, sampler, algo = build(small(f"algo.denoiser={denoiser}"), reach_hdf5)
    algo.set_train()
    losses = [algo.log_info(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1))["Loss"]
              for _ in range(3)]
    assert np.all(np.isfinite(losses))
    ckpt = assert_checkpoint_acts_with_ema(algo, store, tmp_path)
    assert ckpt["recipe_name"] == "flow_policy"


def test_bad_flow_settings_are_config_errors(reach_hdf5):
    for bad, match in ((["algo.flow.steps=0"], "algo.flow.steps"), (["algo.denoiser=mlp"], "unknown denoiser")):
        with pytest.raises(ConfigError, match=match):
            build(small(*bad), reach_hdf5)


def test_fast_preset_entry():
    cfg = compose("flow_policy", ["preset=fast"])
    assert cfg.algo.flow.steps == 4 and list(cfg.algo.unet.down_dims) == [32, 64] and cfg.train.num_epochs == 30
