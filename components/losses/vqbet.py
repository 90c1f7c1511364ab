"""VQ-BeT's two losses (Lee et al. 2024), one per training phase; the networks are :mod:`~modmimic.components.nets.vqbet`.

Both read a ``[B]`` batch of an observation window ``[B, To]`` and the actions ``[B, Tp]`` from step ``t - To + 1``
(:func:`~modmimic.components.batching.horizon_window`) with ``Tp = To + P - 2 + k``: position ``i`` of the window
(``N = To + P - 1`` of them) targets the chunk ``actions[:, i : i + k]`` (:func:`chunks`).

* :func:`vqvae_loss` — phase 1: ``L1(decode(z_q), chunk) + codebook + beta * commitment`` with the straight-through
  ``z_q = z + sg(sum_l q_l - z)``.
* :func:`vqbet_prior_loss` — phase 2, the VQ-VAE frozen (it runs under no grad and its optimizer does not step):
  focal losses of each layer's code (the first layer weighted ``primary_code_weight``, the others
  ``secondary_code_weight``) plus ``offset_weight * L1(decode(codes) + offsets[codes], chunk)`` with ``codes`` drawn
  from the prior (LeRobot's VQ-BeT) or, with ``offset_codes=data``, the data's own codes (BeT's offset loss).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from modmimic import keys as K
from modmimic.keys import declare


def chunks(actions: torch.Tensor, k: int) -> torch.Tensor:
    """Every chunk of ``k`` consecutive actions: ``[B, T, A]`` -> ``[B, T - k + 1, k, A]``."""
    return actions.unfold(1, k, 1).transpose(-1, -2)


def codebook_loss(residuals: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """``sum_l mean((sg(r_l) - q_l)^2)``: moves each layer's codewords toward what they quantize."""
    return F.mse_loss(quantized, residuals.detach(), reduction="none").flatten(1).mean(1).sum()


def commitment_loss(residuals: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """``sum_l mean((r_l - sg(q_l))^2)``: keeps the encoder's output near the codewords it is given."""
    return F.mse_loss(residuals, quantized.detach(), reduction="none").flatten(1).mean(1).sum()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """``mean(-(1 - p_t)^gamma log p_t)`` over rows of ``logits`` ``[N, K]`` (``p_t``: the target class's
    probability); ``gamma = 0`` is the cross-entropy."""
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return (-(1.0 - logp.exp()).pow(gamma) * logp).mean()


@declare(reads=[K.ACTION])
def vqvae_loss(batch, vqvae, *, commitment_weight: float = 0.25) -> dict:
    """Phase 1 (see the module docstring) on every chunk of the window's actions."""
    target = chunks(batch[K.ACTION], vqvae.chunk_size)
    z = vqvae.encode(target)
    codes, q, r = vqvae.quantize(z)
    z_q = z + (q.sum(0) - z).detach()
    recon = F.l1_loss(vqvae.decode(z_q), target)
    cb, commit = codebook_loss(r, q), commitment_loss(r, q)
    used = F.one_hot(codes.flatten(0, -2), vqvae.codebook_size).amax(0).sum(-1)  # [L] distinct codes in the batch
    return {"loss": recon + cb + commitment_weight * commit, "recon_l1": recon.detach(), "codebook": cb.detach(),
            "commitment": commit.detach(), "codes_used": used.float().mean()}


@declare(reads=[K.OBS, K.ACTION])
def vqbet_prior_loss(batch, prior, vqvae, *, primary_code_weight: float = 5.0, secondary_code_weight: float = 0.5,
                     offset_weight: float = 10000.0, focal_gamma: float = 2.0, offset_codes: str = "sampled") -> dict:
    """Phase 2 (see the module docstring); ``prior`` is a :class:`~modmimic.components.nets.vqbet.VQBeTPrior`."""
    if offset_codes not in ("sampled", "data"):
        raise ValueError(f"algo.vqbet.offset_codes must be 'sampled' or 'data', got {offset_codes!r}")
    logits, offsets = prior(batch)
    target = chunks(batch[K.ACTION], vqvae.chunk_size)
    if target.shape[1] != logits.shape[1]:
        raise ValueError(f"{target.shape[1]} action chunks of {vqvae.chunk_size} steps in the window for "
                         f"{logits.shape[1]} prior positions: the window needs To + P - 2 + k actions")
    data_codes = vqvae.codes(target)  # [B, N, L]
    L = data_codes.shape[-1]
    code_losses = [focal_loss(logits[..., l, :].reshape(-1, logits.shape[-1]), data_codes[..., l].reshape(-1),
                              focal_gamma) for l in range(L)]
    codes = data_codes if offset_codes == "data" else prior.sample_codes(logits.detach())
    with torch.no_grad():
        centers = vqvae.decode_codes(codes)
    offset = F.l1_loss(centers + prior.offset_of(offsets, codes), target)
    code = primary_code_weight * code_losses[0] + secondary_code_weight * sum(code_losses[1:])
    out = {"loss": code + offset_weight * offset, "offset_l1": offset.detach(), "code_loss": code.detach(),
           "primary_code_accuracy": (logits[..., 0, :].argmax(-1) == data_codes[..., 0]).float().mean()}
    for l, c in enumerate(code_losses):
        out[f"code{l}_focal"] = c.detach()
    return out
