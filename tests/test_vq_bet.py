"""VQ-BeT: its losses against closed forms (codebook, commitment, focal, residual quantization), the networks, the
two-phase schedule as step-gated updates, and the recipe through the Algo API (train step, act, checkpoint round
trip; bit-exact resume is tests/test_trainer.py's)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from tensordict import TensorDict

from conftest import build_from_reach, checkpoint_round_trip
from modmimic import keys as K
from modmimic.components.losses.vqbet import (chunks, codebook_loss, commitment_loss, focal_loss, vqbet_prior_loss,
                                              vqvae_loss)
from modmimic.components.nets.vqbet import ActionVQVAE, ResidualVQ, VQBeTPrior, nearest_code, residual_quantize
from modmimic.config import ConfigError, compose
from modmimic.export import ExportError, acting_module
from modmimic.program import Update

KEYS = ["pos", "goal_pos", "vel"]


# --- residual quantization and the VQ losses ---------------------------------------------------------------------

def test_residual_quantization_of_a_sum_of_codewords_is_exact():
    """A vector that is exactly codeword i of layer 0 plus codeword j of layer 1 (codebooks at different scales, so
    the nearest choices are unambiguous) is coded (i, j) and reconstructed with zero error."""
    g = torch.Generator().manual_seed(0)
    cb = torch.stack([torch.randn(8, 4, generator=g, dtype=torch.float64) * 10.0,
                      torch.randn(8, 4, generator=g, dtype=torch.float64) * 0.1])
    i, j = torch.tensor([3, 0, 7, 5]), torch.tensor([1, 6, 2, 2])
    z = cb[0, i] + cb[1, j]
    codes, q, r = residual_quantize(z, cb)
    assert torch.equal(codes, torch.stack([i, j], -1))
    assert torch.allclose(q.sum(0), z, rtol=0, atol=1e-12)
    assert torch.allclose(r[1] - q[1], torch.zeros_like(z), atol=1e-12)  # nothing left after the last layer
    assert torch.equal(r[0], z) and torch.allclose(r[1], cb[1, j], atol=1e-12)
    vq = ResidualVQ(2, 8, 4).double().eval()
    with torch.no_grad():
        vq.codebooks.copy_(cb)
    assert torch.allclose(vq.latent(codes), z, atol=1e-12)
    # layer 0 leaves the layer-1 codeword to its successor, layer 1 leaves nothing: both losses are mean(cb1[j]^2)
    want = (cb[1, j] ** 2).mean()
    assert torch.allclose(commitment_loss(r, q), want, rtol=1e-9) and torch.allclose(codebook_loss(r, q), want, rtol=1e-9)


def test_nearest_code_is_the_argmin_of_distances():
    g = torch.Generator().manual_seed(1)
    r, cb = torch.randn(50, 3, generator=g), torch.randn(6, 3, generator=g)
    assert torch.equal(nearest_code(r, cb), torch.cdist(r, cb).argmin(-1))


def test_codebook_and_commitment_losses_closed_form_and_gradients():
    """One layer, residuals (1, 2) and (0, 0) quantized to (0, 0) and (1, 1): each loss is the mean squared error
    summed over layers, (1 + 4 + 1 + 1) / 4 = 1.75; the codebook loss moves only the codewords, the commitment loss
    only the residuals."""
    r = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]], requires_grad=True)
    q = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]], requires_grad=True)
    cb, commit = codebook_loss(r, q), commitment_loss(r, q)
    assert cb.item() == pytest.approx(1.75) and commit.item() == pytest.approx(1.75)
    cb.backward()
    assert r.grad is None and torch.allclose(q.grad, 2 * (q - r).detach() / 4)
    q.grad = None
    commitment_loss(r, q).backward()
    assert q.grad is None and torch.allclose(r.grad, 2 * (r - q).detach() / 4)
    two = torch.cat([r, 2 * r]).detach(), torch.cat([q, q]).detach()  # two layers: the sum of each layer's MSE
    assert codebook_loss(*two).item() == pytest.approx(1.75 + ((2 * r - q) ** 2).mean().item())


def test_focal_loss_closed_form_and_cross_entropy_at_gamma_zero():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([0, 1])
    p = torch.softmax(logits, -1)[torch.arange(2), target]
    expected = (-(1 - p) ** 2 * torch.log(p)).mean()
    assert torch.allclose(focal_loss(logits, target, 2.0), expected, rtol=1e-6)
    assert torch.allclose(focal_loss(logits, target, 0.0), F.cross_entropy(logits, target), rtol=1e-6)


def test_chunks_are_the_sliding_windows():
    a = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    c = chunks(a, 3)
    assert c.shape == (2, 4, 3, 2)
    for i in range(4):
        assert torch.equal(c[:, i], a[:, i:i + 3])


def test_vqvae_loss_is_reconstruction_plus_codebook_plus_weighted_commitment():
    torch.manual_seed(0)
    vq = ActionVQVAE(2, chunk_size=3, hidden_dim=8, latent_dim=4, num_quantizers=2, codebook_size=4).double()
    batch = TensorDict({K.ACTION: torch.rand(5, 6, 2, dtype=torch.float64) * 2 - 1}, batch_size=[5])
    vq.train()
    out = vqvae_loss(batch, vq, commitment_weight=0.25)
    assert bool(vq.vq.initialized)  # seeded from the first batch
    target = chunks(batch[K.ACTION], 3)
    z = vq.encode(target)
    codes, q, r = residual_quantize(z.reshape(-1, 4), vq.vq.codebooks)
    recon = (vq.decode(q.sum(0).view(5, 4, 4)) - target).abs().mean()
    cb = sum(((q[i] - r[i]) ** 2).mean() for i in range(2))
    assert torch.allclose(out["loss"], recon + cb + 0.25 * cb, rtol=1e-10)  # equal terms at the same point
    assert torch.allclose(out["recon_l1"], recon) and 1 <= out["codes_used"] <= 4
    out["loss"].backward()  # the straight-through estimator reaches the encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vq.encoder.parameters())
    assert vq.vq.codebooks.grad.abs().sum() > 0


# --- the prior ---------------------------------------------------------------------------------------------------

class Features(torch.nn.Module):
    """An observation "encoder" returning key ``x`` as is."""

    in_keys = [K.obs("x")]
    output_dim = 3

    def forward(self, td):
        return td[K.obs("x")]


def prior_and_vqvae(To=2, P=2, k=3, A=2):
    torch.manual_seed(0)
    gpt = {"embed_dim": 16, "num_layers": 1, "num_heads": 2, "emb_dropout": 0.0, "attn_dropout": 0.0,
           "block_output_dropout": 0.0}
    prior = VQBeTPrior(Features(), A, To, P, k, 2, 4, gpt, head_hidden_dim=16).double()
    vq = ActionVQVAE(A, k, hidden_dim=8, latent_dim=4, num_quantizers=2, codebook_size=4).double()
    return prior, vq


def window(B=4, To=2, T=5, A=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({K.OBS: {"x": torch.randn(B, To, 3, generator=g, dtype=torch.float64)},
                       K.ACTION: torch.rand(B, T, A, generator=g, dtype=torch.float64) * 2 - 1}, batch_size=[B])


def test_prior_shapes_and_offset_selection():
    prior, vq = prior_and_vqvae()
    logits, offsets = prior(window())
    assert logits.shape == (4, 3, 2, 4) and offsets.shape == (4, 3, 2, 4, 3, 2)
    codes = torch.randint(4, (4, 3, 2))
    got = prior.offset_of(offsets, codes)
    for b in range(4):
        for n in range(3):
            want = offsets[b, n, 0, codes[b, n, 0]] + offsets[b, n, 1, codes[b, n, 1]]
            assert torch.equal(got[b, n], want)
    chunk = prior.predict_chunk(window(), vq, generator=torch.Generator().manual_seed(0))
    codes = prior.sample_codes(logits[:, 1], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(chunk, vq.decode_codes(codes) + prior.offset_of(offsets[:, 1], codes))


def test_prior_loss_closed_form_with_the_data_codes():
    """offset_codes=data: 5 focal(code 0) + 0.5 focal(code 1) + w L1(decode(data codes) + offsets, chunk); the
    VQ-VAE gets no gradient (it is frozen in phase 2)."""
    prior, vq = prior_and_vqvae()
    batch = window()
    out = vqbet_prior_loss(batch, prior, vq, offset_weight=100.0, offset_codes="data")
    logits, offsets = prior(batch)
    target = chunks(batch[K.ACTION], 3)
    codes = vq.codes(target)
    f0 = focal_loss(logits[..., 0, :].reshape(-1, 4), codes[..., 0].reshape(-1))
    f1 = focal_loss(logits[..., 1, :].reshape(-1, 4), codes[..., 1].reshape(-1))
    l1 = (vq.decode_codes(codes) + prior.offset_of(offsets, codes) - target).abs().mean()
    assert torch.allclose(out["loss"], 5 * f0 + 0.5 * f1 + 100.0 * l1, rtol=1e-10)
    out["loss"].backward()
    assert all(p.grad is None for p in vq.parameters())
    assert prior.offset_head[-1].weight.grad.abs().sum() > 0 and prior.code_head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="offset_codes"):
        vqbet_prior_loss(batch, prior, vq, offset_codes="mean")
    with pytest.raises(ValueError, match="To \\+ P - 2 \\+ k"):
        vqbet_prior_loss(window(T=6), prior, vq)


# --- step-gated updates (the engine) -----------------------------------------------------------------------------

def test_updates_gated_by_training_step():
    u = Update("u", [], [], start_step=3, end_step=5)
    assert [s for s in range(8) if u.active(1, s)] == [3, 4]
    assert [s for s in range(4) if Update("v", [], [], end_step=2).active(1, s)] == [0, 1]
    assert all(Update("w", [], []).active(1, s) for s in range(4))


# --- the recipe --------------------------------------------------------------------------------------------------

def small(*extra):
    return compose("vq_bet", [f"observation.modalities.obs.low_dim=[{','.join(KEYS)}]", "train.batch_size=8",
                              "algo.gpt.embed_dim=16", "algo.gpt.num_layers=1", "algo.gpt.num_heads=2",
                              "algo.vqvae.hidden_dim=16", "algo.vqvae.latent_dim=8", "algo.vqbet.head_hidden_dim=16",
                              "algo.horizon.observation_horizon=2", "algo.vqbet.chunk_size=3",
                              "algo.vqbet.action_pred_tokens=2", "algo.horizon.action_horizon=2",
                              "algo.vqvae.train_steps=3", *extra])


def build(cfg, path, seed=0):
    return build_from_reach(cfg, path, KEYS, seed)


def params(net):
    return [p.detach().clone() for p in net.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_recipe_trains_the_vqvae_then_the_prior_with_the_vqvae_frozen(reach_hdf5):
    cfg = small()
    assert cfg.train.seq_length == 2 + 2 - 2 + 3  # To + P - 2 + k
    store, sampler, algo = build(cfg, reach_hdf5)
    algo.set_train()
    vq0, pr0 = params(algo.nets["vqvae"]), params(algo.nets["prior"])
    logs = []
    for _ in range(3):  # phase 1: steps 0, 1, 2
        logs.append(algo.log_info(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)))
    assert not same(vq0, params(algo.nets["vqvae"])) and same(pr0, params(algo.nets["prior"]))
    assert all("vqvae/loss" in lg and "prior/loss" not in lg for lg in logs)
    vq1 = params(algo.nets["vqvae"])
    for _ in range(3):  # phase 2
        lg = algo.log_info(algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1))
        assert "prior/loss" in lg and "vqvae/loss" not in lg and np.isfinite(lg["Loss"])
    assert same(vq1, params(algo.nets["vqvae"])) and not same(pr0, params(algo.nets["prior"]))


def test_recipe_acts_in_chunks_and_the_checkpoint_acts_the_same(reach_hdf5, tmp_path):
    store, sampler, algo = build(small(), reach_hdf5)
    algo.set_train()
    for _ in range(5):
        algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    a, run, policy, ckpt = checkpoint_round_trip(algo, store, tmp_path, KEYS)
    assert ckpt["recipe_name"] == "vq_bet"
    assert a.shape == (5, 2) and np.isfinite(a).all()
    assert np.array_equal(a, run(policy))
    with torch.no_grad():  # acting decodes with the VQ-VAE
        for p in policy.policy.nets["vqvae"].decoder.parameters():
            p.add_(0.5)
    assert not np.array_equal(a, run(policy))
    with pytest.raises(ExportError, match="vqvae"):  # not exportable yet: a clear error, not a wrong module
        acting_module(policy)


def test_bad_settings_are_config_errors(reach_hdf5):
    with pytest.raises(ConfigError, match="temperature"):
        build(small("algo.vqbet.temperature=0.0"), reach_hdf5)
    bad = small()
    with open_dict(bad):
        bad.updates[0]["start_stepp"] = 1
    with pytest.raises(ConfigError, match=r"unknown keys \['start_stepp'\] \(did you mean 'start_step'"):
        build(bad, reach_hdf5)


def test_fast_preset_entry():
    cfg = compose("vq_bet", ["preset=fast"])
    assert cfg.algo.vqvae.train_steps < cfg.train.num_epochs * cfg.experiment.epoch_every_n_steps


def test_explain_shows_the_two_phases():
    from modmimic.recipe import explain

    text = explain("vq_bet", ["algo.gpt.embed_dim=16", "algo.gpt.num_layers=1", "algo.gpt.num_heads=2"])
    assert "update 'vqvae' (steps [0, 20000))" in text and "update 'prior' (steps [20000, end))" in text
    assert "horizon_window(obs_horizon=5, prediction_horizon=11, frame_stack=5)" in text
