"""VQ-BeT networks (Lee et al. 2024, "Behavior Generation with Latent Actions").

* :func:`residual_quantize` — residual vector quantization: layer ``l`` picks the codeword of codebook ``l`` nearest
  to what the earlier layers left, ``r_0 = z``, ``r_{l+1} = r_l - q_l``; the quantized vector is ``sum_l q_l``.
* :class:`ActionVQVAE` — the action tokenizer: an MLP encoder of a flattened chunk of ``k`` actions to a latent, a
  :class:`ResidualVQ` of ``num_quantizers`` codebooks of ``codebook_size`` codes, and an MLP decoder back to the chunk.
* :class:`VQBeTPrior` — the behaviour transformer: the modality-aware
  :class:`~modmimic.components.nets.core.ObsEncoder` per observation step, then ``action_pred_tokens - 1`` learned
  query tokens after the ``To`` observation tokens, robomimic's causal GPT
  (:class:`~modmimic.components.nets.transformer.TransformerBackbone`), and two MLP heads per position: logits of
  each quantizer layer's code, and an offset chunk for every (layer, code). Position ``i`` predicts the chunk that
  starts at its step (``t - To + 1 + i``). ``predict_chunk(td, vqvae)`` samples each layer's code from
  ``softmax(logits / temperature)``, decodes the codes' latent with the VQ-VAE and adds the chosen codes' offsets:
  the chunk of the current step (position ``To - 1``), ``[B, k, A]``.
"""
from __future__ import annotations

import torch
from torch import nn

from modmimic.components.nets.core import ObsEncoder, group_inputs, mlp
from modmimic.components.nets.transformer import TransformerBackbone


def nearest_code(r: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index ``[N]`` of the row of ``codebook`` ``[K, D]`` nearest (squared Euclidean) to each row of ``r`` ``[N, D]``."""
    d = r.pow(2).sum(-1, keepdim=True) - 2.0 * r @ codebook.t() + codebook.pow(2).sum(-1)
    return d.argmin(-1)


def residual_quantize(z: torch.Tensor, codebooks: torch.Tensor):
    """``z`` ``[N, D]``, ``codebooks`` ``[L, K, D]`` -> ``(codes [N, L], quantized [L, N, D], residuals [L, N, D])``:
    ``residuals[l]`` is what layer ``l`` quantizes (``z`` minus the earlier layers' codewords, which are detached, so
    an encoder's gradient reaches it through ``z`` only) and ``quantized[l] = codebooks[l][codes[:, l]]`` (with its
    gradient to the codebook)."""
    r, codes, qs, rs = z, [], [], []
    for cb in codebooks:
        idx = nearest_code(r.detach(), cb.detach())
        q = cb[idx]
        codes.append(idx)
        qs.append(q)
        rs.append(r)
        r = r - q.detach()
    return torch.stack(codes, -1), torch.stack(qs), torch.stack(rs)


class ResidualVQ(nn.Module):
    """``num_quantizers`` learned codebooks of ``codebook_size`` codes of size ``dim`` (gradient-trained with the
    codebook and commitment losses of :mod:`~modmimic.components.losses.vqbet`). Before the first training step the
    codebooks are filled with rows of the first batch's residuals, layer by layer (``initialized`` records it, so a
    checkpoint or a resumed run keeps them); a random codebook far from the data leaves most codes unused."""

    def __init__(self, num_quantizers: int = 2, codebook_size: int = 16, dim: int = 256):
        super().__init__()
        if num_quantizers < 1 or codebook_size < 2 or dim < 1:
            raise ValueError(f"the residual VQ needs num_quantizers >= 1, codebook_size >= 2 and dim >= 1, got "
                             f"{num_quantizers}, {codebook_size}, {dim}")
        self.codebooks = nn.Parameter(torch.randn(num_quantizers, codebook_size, dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def init_from(self, z: torch.Tensor) -> None:
        """Codebook ``l`` <- ``codebook_size`` rows (drawn from the torch RNG) of the residuals ``r_l`` of ``z``."""
        r = z.detach()
        for cb in self.codebooks:
            rows = torch.randint(r.shape[0], (cb.shape[0],), device=r.device) if r.shape[0] < cb.shape[0] else \
                torch.randperm(r.shape[0], device=r.device)[:cb.shape[0]]
            cb.copy_(r[rows])
            r = r - cb[nearest_code(r, cb)]
        self.initialized.fill_(True)

    def forward(self, z: torch.Tensor):
        """:func:`residual_quantize` of ``z`` ``[..., D]``; codes ``[..., L]``, quantized / residuals ``[L, ..., D]``."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        if self.training and not bool(self.initialized):
            self.init_from(flat)
        codes, q, r = residual_quantize(flat, self.codebooks)
        L = self.codebooks.shape[0]
        return codes.view(*lead, L), q.view(L, *lead, -1), r.view(L, *lead, -1)

    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        """``sum_l codebooks[l][codes[..., l]]`` ``[..., D]`` of codes ``[..., L]``."""
        return sum(self.codebooks[l][codes[..., l]] for l in range(self.codebooks.shape[0]))


class ActionVQVAE(nn.Module):
    """Chunks ``[..., k, A]`` <-> latents ``[..., D]`` with a residual VQ between (see the module docstring)."""

    def __init__(self, ac_dim: int, chunk_size: int = 5, hidden_dim: int = 128, latent_dim: int = 256,
                 num_hidden_layers: int = 2, num_quantizers: int = 2, codebook_size: int = 16):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"algo.vqbet.chunk_size must be >= 1, got {chunk_size}")
        self.ac_dim, self.chunk_size = int(ac_dim), int(chunk_size)
        width = [int(hidden_dim)] * int(num_hidden_layers)
        self.encoder = mlp(self.chunk_size * self.ac_dim, latent_dim, width)
        self.vq = ResidualVQ(num_quantizers, codebook_size, latent_dim)
        self.decoder = mlp(latent_dim, self.chunk_size * self.ac_dim, width)

    @property
    def num_quantizers(self) -> int:
        return self.vq.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.vq.codebooks.shape[1]

    def encode(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.encoder(chunk.flatten(-2))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent).unflatten(-1, (self.chunk_size, self.ac_dim))

    def quantize(self, latent: torch.Tensor):
        return self.vq(latent)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The chunk ``[..., k, A]`` that codes ``[..., L]`` stand for (their codewords summed, decoded)."""
        return self.decode(self.vq.latent(codes))

    @torch.no_grad()
    def codes(self, chunk: torch.Tensor) -> torch.Tensor:
        """The codes ``[..., L]`` of chunks ``[..., k, A]`` (no grad, and no codebook initialisation)."""
        z = self.encode(chunk)
        return residual_quantize(z.reshape(-1, z.shape[-1]), self.vq.codebooks)[0].view(*z.shape[:-1], -1)


class VQBeTPrior(nn.Module):
    """Observation window -> per position code logits and offsets (see the module docstring)."""

    def __init__(self, encoder: ObsEncoder, ac_dim: int, obs_horizon: int = 5, action_pred_tokens: int = 3,
                 chunk_size: int = 5, num_quantizers: int = 2, codebook_size: int = 16, gpt: dict | None = None,
                 head_hidden_dim: int = 1024, temperature: float = 0.1):
        super().__init__()
        if obs_horizon < 1 or action_pred_tokens < 1:
            raise ValueError(f"VQ-BeT needs observation_horizon >= 1 and action_pred_tokens >= 1, got {obs_horizon}, "
                             f"{action_pred_tokens}")
        if not temperature > 0:
            raise ValueError(f"algo.vqbet.temperature must be > 0, got {temperature}")
        self.encoder, self.in_keys = encoder, encoder.in_keys
        self.To, self.P, self.k, self.ac_dim = int(obs_horizon), int(action_pred_tokens), int(chunk_size), int(ac_dim)
        self.L, self.K, self.temperature = int(num_quantizers), int(codebook_size), float(temperature)
        d = encoder.output_dim
        self.queries = nn.Parameter(torch.zeros(self.P - 1, d))  # the action-prediction tokens' inputs
        self.gpt = TransformerBackbone(d, context_length=self.To + self.P - 1, **dict(gpt or {}))
        e = self.gpt.output_dim
        self.code_head = mlp(e, self.L * self.K, [int(head_hidden_dim)])
        self.offset_head = mlp(e, self.L * self.K * self.k * self.ac_dim, [int(head_hidden_dim)])

    @property
    def positions(self) -> int:
        """Predicted chunks per window: one per observation step and per extra action-prediction token."""
        return self.To + self.P - 1

    def forward(self, td):
        """``(logits [B, N, L, K], offsets [B, N, L, K, k, A])`` of a ``[B, To]`` observation window, N positions."""
        f = self.encoder(td)
        if f.dim() == 2:
            f = f.unsqueeze(1)
        if f.shape[1] != self.To:
            raise ValueError(f"expected an observation window of To={self.To} steps, got {f.shape[1]}")
        B = f.shape[0]
        h = self.gpt(torch.cat([f, self.queries.to(f.dtype).expand(B, -1, -1)], dim=1))
        logits = self.code_head(h).view(B, self.positions, self.L, self.K)
        offsets = self.offset_head(h).view(B, self.positions, self.L, self.K, self.k, self.ac_dim)
        return logits, offsets

    def sample_codes(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        """Codes ``[..., L]``, each layer's drawn from ``softmax(logits / temperature)`` (layers independently)."""
        probs = torch.softmax(logits / self.temperature, dim=-1)
        flat = probs.reshape(-1, self.K)
        return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])

    @staticmethod
    def offset_of(offsets: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``sum_l offsets[..., l, codes[..., l]]`` ``[..., k, A]`` from offsets ``[..., L, K, k, A]``."""
        idx = codes[..., None, None, None].expand(*codes.shape, 1, *offsets.shape[-2:])
        return offsets.gather(-3, idx).squeeze(-3).sum(-3)

    @torch.no_grad()
    def predict_chunk(self, td, vqvae: ActionVQVAE, generator=None) -> torch.Tensor:
        """The current step's chunk ``[B, k, A]``: sampled codes decoded by ``vqvae`` plus their offsets."""
        logits, offsets = self(td)
        logits, offsets = logits[:, self.To - 1], offsets[:, self.To - 1]
        codes = self.sample_codes(logits, generator)
        return vqvae.decode_codes(codes) + self.offset_of(offsets, codes)


def action_vqvae(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, chunk_size: int = 5,
                 vqvae: dict | None = None) -> ActionVQVAE:
    """The recipe's ``nets.vqvae``: an :class:`ActionVQVAE` of chunks of ``chunk_size`` actions; ``vqvae`` holds
    ``hidden_dim``, ``latent_dim``, ``num_hidden_layers``, ``num_quantizers``, ``codebook_size`` (observations are not
    its input; the section's other keys, the phase length and the loss weight, are not the network's)."""
    keys = ("hidden_dim", "latent_dim", "num_hidden_layers", "num_quantizers", "codebook_size")
    return ActionVQVAE(ac_dim, chunk_size, **{k: v for k, v in dict(vqvae or {}).items() if k in keys})


def vqbet_prior(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, observation_horizon: int = 5,
                action_pred_tokens: int = 3, chunk_size: int = 5, num_quantizers: int = 2, codebook_size: int = 16,
                gpt: dict | None = None, head_hidden_dim: int = 1024, temperature: float = 0.1,
                encoder: dict | None = None) -> VQBeTPrior:
    """The recipe's ``nets.prior``: a :class:`VQBeTPrior` over the recipe's observation encoder; ``gpt`` holds
    :class:`~modmimic.components.nets.transformer.TransformerBackbone`'s settings (``embed_dim``, ``num_layers``,
    ``num_heads``, dropouts, ...; its context is ``observation_horizon + action_pred_tokens - 1``)."""
    enc = ObsEncoder(group_inputs(obs_shapes, goal_shapes), encoder)
    return VQBeTPrior(enc, ac_dim, observation_horizon, action_pred_tokens, chunk_size, num_quantizers,
                      codebook_size, gpt, head_hidden_dim, temperature)
