"""ACT: Action Chunking with Transformers (Zhao et al. 2023, "Learning Fine-Grained Bimanual Manipulation with
Low-Cost Hardware"), the network of the ``act`` recipe.

A conditional VAE over action chunks:

* **posterior encoder** ``q(z | a_{t:t+k}, s_t)``: a transformer encoder over ``[CLS, obs token, k action tokens]``
  (fixed sinusoidal position embeddings, padded chunk steps masked out of attention); the CLS output is projected to
  the latent mean and log-variance.
* **decoder** ``p(a_{t:t+k} | z, s_t)``: a transformer encoder over ``[latent token, one token per observation key]``
  (learned position embeddings), then a transformer decoder whose ``k`` queries (learned position embeddings,
  zero inputs) cross-attend to the encoder's output; a Linear head maps each query to an action.

At inference the latent is the prior mean ``z = 0`` (:meth:`ACT.predict_chunk`). The layers are DETR's (as in ACT
and LeRobot): post-norm, position embeddings added to queries and keys of every attention (never to values), a
final LayerNorm after the decoder, ReLU feed-forward.

Observation tokens (:meth:`ACT.obs_tokens`), in the encoder's key order (obs keys sorted, then goal keys):

* a low-dim key: one token, a Linear projection of its vector;
* an image key (rgb / depth / scan, listed under ``observation.modalities``): its core from the recipe's
  ``observation.encoder.<modality>`` block (robomimic's ``VisualCore``: backbone -> SpatialSoftmax -> Linear, with
  the modality's randomizers; no feature activation, as robomimic's transformer encoders), then a Linear projection
  to the embedding. With the default flat core that is **one token per image key** (robomimic-style). A core left
  unflattened (``core_kwargs: {pool_class: null, flatten: false, feature_dimension: null}``) outputs the backbone's
  ``[C, H', W']`` feature map, which becomes ``H' * W'`` tokens (each cell's ``C`` channels projected, LeRobot's
  ACT), with learned position embeddings like every other token (LeRobot uses fixed 2-D sinusoidal ones).

The posterior encoder sees the low-dim observations (and goals) as one concatenated token (ACT's "joints" token;
images never enter it); without low-dim keys it sees ``[CLS, k action tokens]`` only (LeRobot without a robot state).
"""
from __future__ import annotations

import torch
from torch import nn

from modmimic import keys as K
from modmimic.components.nets.core import ObsEncoder, group_inputs
from modmimic.components.nets.film import FUSE_MODES, FiLM, task_embedding
from modmimic.components.nets.transformer import sinusoidal_table

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _feedforward(dim: int, hidden_dim: int, dropout: float, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden_dim), _ACTIVATIONS[activation](), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, dim))


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer: ``x = LN(x + attn(x + pos, x + pos, x))``, ``x = LN(x + FF(x))``."""

    def __init__(self, dim: int, num_heads: int, hidden_dim: int, dropout: float, activation: str):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ff = _feedforward(dim, hidden_dim, dropout, activation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x, pos, key_padding_mask=None):
        qk = x + pos
        x = self.norm1(x + self.drop1(self.attn(qk, qk, x, key_padding_mask=key_padding_mask,
                                                need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.ff(x)))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention over the queries, cross-attention to the encoder memory, FF."""

    def __init__(self, dim: int, num_heads: int, hidden_dim: int, dropout: float, activation: str):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ff = _feedforward(dim, hidden_dim, dropout, activation)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x, query_pos, memory, memory_pos):
        qk = x + query_pos
        x = self.norm1(x + self.drop1(self.self_attn(qk, qk, x, need_weights=False)[0]))
        x = self.norm2(x + self.drop2(self.cross_attn(x + query_pos, memory + memory_pos, memory,
                                                      need_weights=False)[0]))
        return self.norm3(x + self.drop3(self.ff(x)))


class ACT(nn.Module):
    """The ACT CVAE. ``inputs``: ``[(nested key, raw shape), ...]`` of the observation (and goal) entries;
    ``encoder``: the observation encoder spec (:func:`~modmimic.components.nets.core.encoder_spec`) that makes the
    image keys' cores (None: every key low-dim).

    * ``forward(td)`` (training): ``td`` is a ``[B]`` batch with the current observation and the data chunk
      ``td["action"]`` ``[B, chunk_size, A]`` (optionally ``td[("collector", "mask")]`` ``[B, chunk_size]``, False on
      padded steps, which the posterior encoder ignores). Returns ``{"action": [B, chunk_size, A], "mu": [B, latent],
      "logvar": [B, latent]}``; ``z`` is a reparameterised posterior sample in training mode, the posterior mean in
      eval mode.
    * ``predict_chunk(td)``: ``[B, chunk_size, A]`` decoded with the prior mean ``z = 0`` (the acting path).
    * ``task_dim`` (multi-task runs): the task embedding ``td[("task", "embedding")]`` ``[B, task_dim]`` is one more
      token of the posterior encoder, and conditions the decoder's observation tokens: ``task_fuse="film"`` modulates
      every observation token (FiLM over the embedding dim), ``"concat"`` adds it as one more token.
    """

    def __init__(self, inputs, ac_dim: int, chunk_size: int = 100, embed_dim: int = 512, num_heads: int = 8,
                 hidden_dim: int = 3200, num_layers: int = 4, decoder_layers: int = 1, vae_layers: int = 4,
                 latent_dim: int = 32, dropout: float = 0.1, activation: str = "relu", encoder: dict | None = None,
                 task_dim: int | None = None, task_fuse: str = "film"):
        super().__init__()
        if task_dim and task_fuse not in FUSE_MODES:
            raise ValueError(f"task fuse mode {task_fuse!r}: expected one of {FUSE_MODES}")
        if chunk_size < 1:
            raise ValueError(f"algo.act.chunk_size must be >= 1, got {chunk_size}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"algo.act.embed_dim ({embed_dim}) must be divisible by algo.act.num_heads ({num_heads})")
        if min(num_layers, decoder_layers, vae_layers) < 1:
            raise ValueError(f"ACT needs at least one layer in each transformer: algo.act.num_layers={num_layers}, "
                             f"algo.act.decoder.num_layers={decoder_layers}, algo.act.vae.num_layers={vae_layers}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown algo.act.activation {activation!r}: expected one of {sorted(_ACTIVATIONS)}")
        self.inputs = [(tuple(k) if isinstance(k, (list, tuple)) else k, tuple(s)) for k, s in inputs]
        self.chunk_size, self.ac_dim = int(chunk_size), int(ac_dim)
        self.latent_dim, self.embed_dim = int(latent_dim), int(embed_dim)
        layer = lambda: EncoderLayer(embed_dim, num_heads, hidden_dim, dropout, activation)  # noqa: E731

        # every key's features (image cores hold parameters; low-dim keys pass through), one token source per key
        self.obs_encoder = ObsEncoder(self.inputs, encoder, feature_activation=None)
        self.token_shapes = [_token_shape(k, self.obs_encoder, name) for k, name in
                             zip(self.obs_encoder.in_keys, self.obs_encoder._names)]
        low_dim = [(k, s) for (k, s), m in zip(self.inputs, self.obs_encoder.modalities) if m == "low_dim"]

        # posterior encoder q(z | actions, obs): [CLS, low-dim obs, a_0 .. a_{k-1}] with fixed sinusoidal positions
        self.obs_concat = ObsEncoder(low_dim) if low_dim else None
        self.vae_cls = nn.Embedding(1, embed_dim)
        self.vae_obs_proj = nn.Linear(self.obs_concat.output_dim, embed_dim) if low_dim else None
        self.vae_action_proj = nn.Linear(ac_dim, embed_dim)
        self.task_dim, self.task_fuse = int(task_dim or 0), task_fuse
        n_task = 1 if self.task_dim else 0
        self.register_buffer("vae_pos", sinusoidal_table(2 + n_task + chunk_size, embed_dim), persistent=False)
        self.vae_encoder = nn.ModuleList(layer() for _ in range(vae_layers))
        self.vae_latent = nn.Linear(embed_dim, 2 * latent_dim)

        # decoder p(actions | z, obs): encoder over [z, one token per observation key], decoder of chunk queries
        self.latent_proj = nn.Linear(latent_dim, embed_dim)
        self.obs_proj = nn.ModuleList(nn.Linear(dim, embed_dim) for _, dim in self.token_shapes)
        self.n_obs_tokens = sum(n for n, _ in self.token_shapes)
        n_task_tokens = 1 if self.task_dim and task_fuse == "concat" else 0
        self.token_pos = nn.Embedding(1 + self.n_obs_tokens + n_task_tokens, embed_dim)
        self.encoder = nn.ModuleList(layer() for _ in range(num_layers))
        self.query_pos = nn.Embedding(chunk_size, embed_dim)
        self.decoder = nn.ModuleList(DecoderLayer(embed_dim, num_heads, hidden_dim, dropout, activation)
                                     for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(embed_dim)
        self.action_head = nn.Linear(embed_dim, ac_dim)
        if self.task_dim:  # built last: a single-task ACT draws its weights as before
            self.vae_task_proj = nn.Linear(self.task_dim, embed_dim)
            self.task_proj = nn.Linear(self.task_dim, embed_dim) if task_fuse == "concat" else None
            self.task_film = FiLM(embed_dim, self.task_dim) if task_fuse == "film" else None
        for name, p in self.named_parameters():  # DETR / ACT: xavier-uniform transformer weights
            if p.dim() > 1 and name.startswith(("vae_encoder", "encoder", "decoder")):
                nn.init.xavier_uniform_(p)

    # --- pieces ------------------------------------------------------------------------------------------------
    def posterior(self, td, actions: torch.Tensor, mask: torch.Tensor | None = None):
        """``(mu, logvar)`` of ``q(z | actions, obs)``, each ``[B, latent_dim]``; ``mask`` ``[B, k]`` is False on
        padded chunk steps (left out of attention)."""
        B = actions.shape[0]
        prefix = [self.vae_cls.weight.expand(B, 1, -1)]
        if self.obs_concat is not None:
            prefix.append(self.vae_obs_proj(self.obs_concat(td)).unsqueeze(1))
        if self.task_dim:
            prefix.append(self.vae_task_proj(self.task_embedding(td)).unsqueeze(1))
        tokens = torch.cat([*prefix, self.vae_action_proj(actions)], dim=1)
        pad = None
        if mask is not None:
            pad = torch.cat([torch.zeros(B, len(prefix), dtype=torch.bool, device=mask.device), ~mask.bool()], dim=1)
        pos = self.vae_pos[: tokens.shape[1]].to(tokens.dtype)
        for blk in self.vae_encoder:
            tokens = blk(tokens, pos, pad)
        mu, logvar = self.vae_latent(tokens[:, 0]).chunk(2, dim=-1)
        return mu, logvar

    def obs_tokens(self, td) -> torch.Tensor:
        """``[B, n_obs_tokens, embed_dim]``: one token per low-dim observation (goal) key, one per image key with a
        flat core, ``H' * W'`` per image key whose core outputs a ``[C, H', W']`` feature map (module docstring); a
        multi-task ACT's task FiLMs them (or is one more token)."""
        enc, parts = self.obs_encoder, []
        for proj, k, name, (n, dim) in zip(self.obs_proj, enc.in_keys, enc._names, self.token_shapes):
            x = td.get(k)
            if name is None:
                parts.append(proj(x).unsqueeze(1))
                continue
            f = enc.key_encoders[name](x)  # [B, n * dim]: a flat feature or a [dim, n] feature map
            parts.append(proj(f.reshape(f.shape[0], dim, n).transpose(1, 2)) if n > 1 else proj(f).unsqueeze(1))
        tokens = torch.cat(parts, dim=1)
        if not self.task_dim:
            return tokens
        c = self.task_embedding(td)
        if self.task_film is not None:
            return self.task_film(tokens, c)
        return torch.cat([tokens, self.task_proj(c).unsqueeze(1)], dim=1)

    def task_embedding(self, td) -> torch.Tensor:
        """The batch's task embedding ``[B, task_dim]`` (a multi-task ACT)."""
        return task_embedding(td, self.task_dim).to(self.latent_proj.weight.dtype)

    def decode(self, td, z: torch.Tensor) -> torch.Tensor:
        """``[B, chunk_size, A]`` actions for latent ``z`` ``[B, latent_dim]``."""
        tokens = torch.cat([self.latent_proj(z).unsqueeze(1), self.obs_tokens(td)], dim=1)
        pos = self.token_pos.weight.unsqueeze(0)
        for blk in self.encoder:
            tokens = blk(tokens, pos)
        B = z.shape[0]
        qpos = self.query_pos.weight.unsqueeze(0)
        x = torch.zeros(B, self.chunk_size, self.embed_dim, device=z.device, dtype=z.dtype)
        for blk in self.decoder:
            x = blk(x, qpos, tokens, pos)
        return self.action_head(self.decoder_norm(x))

    # --- interface -----------------------------------------------------------------------------------------------
    def forward(self, td) -> dict:
        actions = td.get(K.ACTION)
        if actions.dim() != 3 or actions.shape[1] != self.chunk_size:
            raise ValueError(f"ACT trains on action chunks [B, {self.chunk_size}, {self.ac_dim}], got action shape "
                             f"{tuple(actions.shape)} (batch fn modmimic.components.batching.action_chunk)")
        mu, logvar = self.posterior(td, actions, td.get(K.MASK, None))
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        return {"action": self.decode(td, z), "mu": mu, "logvar": logvar}

    def predict_chunk(self, td) -> torch.Tensor:
        """``[B, chunk_size, A]``: the chunk decoded from the prior mean ``z = 0`` for a ``[B]`` observation batch."""
        B = td.batch_size[0]
        ref = self.latent_proj.weight
        return self.decode(td, torch.zeros(B, self.latent_dim, device=ref.device, dtype=ref.dtype))


def _token_shape(key, enc: ObsEncoder, name) -> tuple:
    """``(tokens, token dim)`` of one observation key: a low-dim key or a flat image feature is one token; a core
    that outputs a ``[C, H', W']`` feature map gives ``H' * W'`` tokens of ``C`` channels."""
    if name is None:
        return 1, int(enc.shapes[enc.in_keys.index(key)][0])
    shape = tuple(enc.key_encoders[name].core.output_shape())
    if len(shape) == 1:
        return 1, int(shape[0])
    if len(shape) == 3:
        return int(shape[1] * shape[2]), int(shape[0])
    raise ValueError(f"ACT makes tokens of a flat image feature [D] or a feature map [C, H, W]; the core of {key} "
                     f"outputs shape {shape} (set its core_kwargs flatten: true, or pool_class: null)")


def act_policy(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, chunk_size: int = 100,
               embed_dim: int = 512, num_heads: int = 8, hidden_dim: int = 3200, num_layers: int = 4,
               decoder: dict | None = None, vae: dict | None = None, dropout: float = 0.1,
               activation: str = "relu", encoder: dict | None = None, task_dim: int | None = None,
               task_fuse: str = "film") -> ACT:
    """Builder the ``act`` recipe names: ``decoder = {num_layers}``, ``vae = {num_layers, latent_dim}`` are the
    recipe's ``algo.act.decoder`` / ``algo.act.vae`` sections; ``encoder`` the observation encoder spec (filled in
    from the recipe's ``observation`` section: image keys become tokens, see the module docstring)."""
    inputs = group_inputs(obs_shapes, goal_shapes)
    decoder, vae = dict(decoder or {}), dict(vae or {})
    for where, section, known in (("decoder", decoder, {"num_layers"}), ("vae", vae, {"num_layers", "latent_dim"})):
        if set(section) - known:
            raise ValueError(f"algo.act.{where}: unknown keys {sorted(set(section) - known)} (has {sorted(known)})")
    return ACT(inputs, ac_dim, chunk_size=chunk_size, embed_dim=embed_dim, num_heads=num_heads, hidden_dim=hidden_dim,
               num_layers=num_layers, decoder_layers=int(decoder.get("num_layers", 1)),
               vae_layers=int(vae.get("num_layers", 4)), latent_dim=int(vae.get("latent_dim", 32)), dropout=dropout,
               activation=activation, encoder=encoder, task_dim=task_dim, task_fuse=task_fuse)
