"""The VAE's KL terms against closed forms, the ELBO loss, and every robomimic prior option trained a few steps."""
import math

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from modmimic.components.losses.vae import gumbel_temperature, vae_elbo
from modmimic.components.nets.vae import VAE, VAEActor, vae_actor

B, OBS_DIM, AC_DIM, LAT = 16, 3, 2, 4


def small(**kw):
    return dict(latent_dim=LAT, encoder_layer_dims=(32,), decoder_layer_dims=(32,), prior_layer_dims=(32,), **kw)


def hand_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, LAT, generator=g), 0.5 * torch.randn(B, LAT, generator=g)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, OBS_DIM, generator=g)
    y = 0.8 * torch.tanh(x[:, :AC_DIM] - 0.5 * x[:, 1:AC_DIM + 1])
    return TensorDict({"observation": {"a": x}, "action": y}, batch_size=[B])


def test_kl_standard_normal_closed_form():
    vae = VAE(AC_DIM, AC_DIM, **small())
    mean, logvar = hand_params()
    q, p = Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros(LAT), torch.ones(LAT))
    expected = kl_divergence(q, p).sum(-1).mean()
    got = vae.kl_loss({"mean": mean, "logvar": logvar}, z=mean)
    torch.testing.assert_close(got, expected)


def test_kl_learned_gaussian_prior_closed_form():
    vae = VAE(AC_DIM, AC_DIM, **small(prior="gaussian", prior_learn=True))
    p_mean, p_logvar = torch.linspace(-1, 1, LAT), torch.linspace(-0.5, 0.7, LAT)
    with torch.no_grad():
        vae.prior_params.copy_(torch.cat([p_mean, p_logvar]))
    mean, logvar = hand_params(1)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(p_mean, (0.5 * p_logvar).exp()))
    got = vae.kl_loss({"mean": mean, "logvar": logvar}, z=mean)
    torch.testing.assert_close(got, expected.sum(-1).mean())


def test_kl_conditioned_gaussian_prior_closed_form():
    vae = VAE(AC_DIM, AC_DIM, condition_dim=OBS_DIM, **small(prior="gaussian", prior_learn=True,
                                                              prior_is_conditioned=True))
    cond = torch.randn(B, OBS_DIM)
    p_mean, p_logvar = vae.prior_net(cond).chunk(2, -1)
    mean, logvar = hand_params(2)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(p_mean, (0.5 * p_logvar).exp()))
    got = vae.kl_loss({"mean": mean, "logvar": logvar}, z=mean, condition=cond)
    torch.testing.assert_close(got, expected.sum(-1).mean())


@pytest.mark.parametrize("learn_weights", [False, True])
@pytest.mark.parametrize("conditioned", [False, True])
def test_kl_gmm_prior_monte_carlo_at_sampled_z(learn_weights, conditioned):
    M = 3
    torch.manual_seed(0)
    vae = VAE(AC_DIM, AC_DIM, condition_dim=OBS_DIM, **small(prior="gmm", prior_learn=True,
                                                              prior_is_conditioned=conditioned,
                                                              prior_gmm_num_modes=M,
                                                              prior_gmm_learn_weights=learn_weights))
    if not conditioned:  # some logvars outside the clamp range
        with torch.no_grad():
            vae.prior_params[M * LAT:M * LAT + 2] = torch.tensor([-12.0, 35.0])
            if learn_weights:
                vae.prior_params[2 * M * LAT:] = torch.tensor([0.5, -1.0, 2.0])
    x, cond = torch.randn(B, AC_DIM), torch.randn(B, OBS_DIM)
    out = vae(x, cond)
    mean, logvar, z = out["encoder_params"]["mean"], out["encoder_params"]["logvar"], out["z"]
    flat = vae.prior_net(cond) if conditioned else vae.prior_params.expand(B, -1)
    mu = flat[:, :M * LAT].reshape(B, M, LAT)
    lv = flat[:, M * LAT:2 * M * LAT].reshape(B, M, LAT).clamp(-8, 30)
    w = flat[:, 2 * M * LAT:] if learn_weights else torch.zeros(B, M)
    log_q = Independent(Normal(mean, (0.5 * logvar.clamp(-8, 30)).exp()), 1).log_prob(z)
    log_p = MixtureSameFamily(Categorical(logits=w), Independent(Normal(mu, (0.5 * lv).exp()), 1)).log_prob(z)
    torch.testing.assert_close(out["kl_loss"], (log_q - log_p).mean())


def test_kl_categorical_uniform_prior():
    C = 5
    vae = VAE(AC_DIM, AC_DIM, **small(prior="categorical", prior_categorical_dim=C))
    logits = torch.randn(B, LAT, C)
    q = logits.softmax(-1)
    expected = (q * (q.log() - math.log(1.0 / C))).sum((-2, -1)).mean()
    torch.testing.assert_close(vae.kl_loss({"logit": logits}, z=None), expected)
    assert vae.kl_loss({"logit": torch.zeros(B, LAT, C)}, z=None).abs() < 1e-6


def test_kl_categorical_learned_prior():
    C = 5
    vae = VAE(AC_DIM, AC_DIM, **small(prior="categorical", prior_learn=True, prior_categorical_dim=C))
    with torch.no_grad():
        vae.prior_params.normal_()
    logits = torch.randn(B, LAT, C)
    expected = kl_divergence(Categorical(logits=logits),
                             Categorical(logits=vae.prior_params.reshape(LAT, C))).sum(-1).mean()
    torch.testing.assert_close(vae.kl_loss({"logit": logits}, z=None), expected)


def test_gumbel_temperature_schedule_and_elbo_sets_it():
    assert gumbel_temperature(0) == pytest.approx(1.0)
    assert gumbel_temperature(100) == pytest.approx(0.9)
    assert gumbel_temperature(1000) == pytest.approx(0.3)
    actor = VAEActor({"a": (OBS_DIM,)}, AC_DIM, **small(prior="categorical", prior_categorical_dim=3))
    vae_elbo(batch(), actor, epoch=100)
    assert actor.get_gumbel_temperature() == pytest.approx(0.9)
    vae_elbo(batch(), actor, epoch=5000, min_temp=0.5)
    assert actor.get_gumbel_temperature() == pytest.approx(0.5)


def test_reconstruction_loss_is_mse():
    x, cond = torch.randn(B, AC_DIM), torch.randn(B, OBS_DIM)
    vae = VAE(AC_DIM, AC_DIM, condition_dim=OBS_DIM, **small())
    out = vae(x, cond)
    torch.testing.assert_close(out["reconstruction_loss"], F.mse_loss(out["reconstruction"], x))
    vae = VAE(AC_DIM, AC_DIM, condition_dim=OBS_DIM, **small(decoder_reconstruction_sum_across_elements=True))
    out = vae(x, cond)
    torch.testing.assert_close(out["reconstruction_loss"], (out["reconstruction"] - x).pow(2).sum() / B)


def test_elbo_is_recons_plus_weighted_kl():
    actor = VAEActor({"a": (OBS_DIM,)}, AC_DIM, **small())
    td = batch()
    torch.manual_seed(3)
    out = actor(td)
    torch.manual_seed(3)
    losses = vae_elbo(td, actor, kl_weight=0.25)
    torch.testing.assert_close(losses["loss"], out["reconstruction_loss"] + 0.25 * out["kl_loss"])
    torch.testing.assert_close(losses["reconstruction_loss"], out["reconstruction_loss"])
    assert not losses["kl_loss"].requires_grad and losses["loss"].requires_grad


def test_freeze_encoder_stops_encoder_gradient():
    actor = VAEActor({"a": (OBS_DIM,)}, AC_DIM, **small())
    vae_elbo(batch(), actor, freeze_encoder=True)["loss"].backward()
    assert all(p.grad is None for p in actor.vae.encoder.parameters())
    assert all(p.grad is not None for p in actor.vae.decoder.parameters())


def test_sample_prior_layout_per_condition_row():
    vae = VAE(AC_DIM, AC_DIM, condition_dim=OBS_DIM, latent_dim=LAT, encoder_layer_dims=(8,),
              decoder_layer_dims=(8,), prior="gaussian", prior_learn=True, prior_is_conditioned=True,
              prior_layer_dims=())
    with torch.no_grad():  # prior mean = 100 * condition[:, 0] on every latent dim, std ~ 0
        vae.prior_net[0].weight.zero_()
        vae.prior_net[0].weight[:LAT, 0] = 100.0
        vae.prior_net[0].bias.zero_()
        vae.prior_net[0].bias[LAT:] = -20.0
    cond = torch.randn(3, OBS_DIM)
    z = vae.sample_prior(4, cond)
    assert z.shape == (12, LAT)
    torch.testing.assert_close(z.view(3, 4, LAT), (100 * cond[:, 0]).view(3, 1, 1).expand(3, 4, LAT),
                               atol=0.1, rtol=0)  # std e^-4 (logvar clamped at -8)
    assert vae.decode(cond, n=4).shape == (12, AC_DIM)
    # an unconditioned prior: n samples without condition, B * n with it
    vae = VAE(AC_DIM, AC_DIM, condition_dim=OBS_DIM, **small(latent_clip=0.1))
    assert vae.sample_prior(5).shape == (5, LAT) and vae.sample_prior(5).abs().max() <= 0.1
    assert vae.sample_prior(2, cond).shape == (6, LAT)
    cat = VAE(AC_DIM, AC_DIM, **small(prior="categorical", prior_categorical_dim=3))
    zc = cat.sample_prior(7)
    assert zc.shape == (7, LAT * 3) and torch.all(zc.view(7, LAT, 3).sum(-1) == 1)


def test_invalid_prior_combinations_raise():
    with pytest.raises(ValueError, match="prior_learn"):
        VAE(2, 2, prior="gmm")
    with pytest.raises(ValueError, match="learned"):
        VAE(2, 2, condition_dim=3, prior="categorical", prior_is_conditioned=True)
    with pytest.raises(ValueError, match="conditioned prior"):
        VAE(2, 2, condition_dim=3, decoder_is_conditioned=False)


PRIORS = {
    "normal": {},
    "gaussian": {"learn": True},
    "gaussian-conditioned": {"learn": True, "is_conditioned": True},
    "gmm": {"learn": True, "use_gmm": True, "gmm_num_modes": 3},
    "gmm-weights": {"learn": True, "use_gmm": True, "gmm_num_modes": 3, "gmm_learn_weights": True},
    "gmm-conditioned": {"learn": True, "is_conditioned": True, "use_gmm": True, "gmm_num_modes": 3},
    "gmm-conditioned-weights": {"learn": True, "is_conditioned": True, "use_gmm": True, "gmm_num_modes": 3,
                                "gmm_learn_weights": True},
    "categorical-uniform": {"use_categorical": True, "categorical_dim": 3},
    "categorical-learned": {"learn": True, "use_categorical": True, "categorical_dim": 3},
    "categorical-conditioned": {"learn": True, "is_conditioned": True, "use_categorical": True,
                                "categorical_dim": 3, "categorical_gumbel_softmax_hard": True},
}


def mean_elbo(actor, td, epoch, reps=8):
    with torch.no_grad():
        torch.manual_seed(123)
        return sum(vae_elbo(td, actor, epoch=epoch)["loss"].item() for _ in range(reps)) / reps


@pytest.mark.parametrize("name", list(PRIORS))
def test_every_prior_builds_trains_and_acts(name):
    torch.manual_seed(0)
    cfg = {"enabled": True, "latent_dim": LAT, "latent_clip": None, "kl_weight": 1.0,
           "decoder": {"is_conditioned": True, "reconstruction_sum_across_elements": False},
           "prior": dict(PRIORS[name]), "encoder_layer_dims": [32, 32], "decoder_layer_dims": [32, 32],
           "prior_layer_dims": [32, 32]}
    actor = vae_actor({"a": (OBS_DIM,)}, AC_DIM, vae=cfg)
    assert actor.in_keys == [("observation", "a")] and actor.recurrent is False
    assert actor.vae.prior == name.split("-")[0]
    td = batch()
    before = mean_elbo(actor, td, epoch=0)
    opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
    for step in range(60):
        loss = vae_elbo(td, actor, epoch=step)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mean_elbo(actor, td, epoch=60)
    assert after < before, (name, before, after)
    a = actor.act(td)
    assert a.shape == (B, AC_DIM) and a.abs().max() <= 1.0
    assert actor.act(td, n=5).shape == (B, 5, AC_DIM)
