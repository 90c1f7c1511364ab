"""Conditional VAE over flat vectors with robomimic's four prior families, and the BC-VAE actor built on it.

:class:`VAE` models ``p(x | c, g)``: an encoder MLP over ``cat(x, c, g)`` gives the posterior (``mean``/``logvar``,
or ``logit`` ``[B, latent_dim, categorical_dim]`` for a categorical latent), a decoder MLP over
``cat(z, c, g)`` (or ``z`` alone when ``decoder_is_conditioned=False``) reconstructs ``x``. Priors (``prior=``):

* ``"normal"``      N(0, 1); closed-form KL.
* ``"gaussian"``    learned diagonal Gaussian (``prior_learn=True``), free parameters or an MLP of ``cat(c, g)``
  (``prior_is_conditioned``); closed-form KL between Gaussians.
* ``"gmm"``         learned mixture of ``prior_gmm_num_modes`` diagonal Gaussians (``prior_learn=True``), uniform
  or learned weights, free or conditioned; Monte-Carlo KL at the posterior sample ``z``:
  ``log q(z|x) - log sum_k w_k N(z; mu_k, sigma_k)``, every logvar (posterior and prior) clamped to [-8, 30].
* ``"categorical"`` ``latent_dim`` categoricals of ``prior_categorical_dim`` classes; uniform prior, or learned
  (free or conditioned) logits. The posterior is sampled by Gumbel-softmax at ``get_gumbel_temperature()``
  (optionally hard, straight-through); KL(q || p) summed over latent dims.

As in robomimic, ``prior_learn=False`` means N(0, 1) (or the uniform categorical); a ``"gaussian"``/``"gmm"``
prior, and any conditioned prior, need ``prior_learn=True``. ``latent_clip`` clamps samples drawn from the prior.

Latents are flat: ``[N, latent_dim]``, or ``[N, latent_dim * categorical_dim]`` (one-hot/soft rows laid out
latent-dim major) for the categorical prior. Every loss is a mean over the batch.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modmimic import keys as K
from modmimic.components.nets.core import ObsEncoder, group_inputs, mlp
from modmimic.components.nets.distributions import VAEPolicyDistribution

PRIORS = ("normal", "gaussian", "gmm", "categorical")
LOGVAR_MIN, LOGVAR_MAX = -8.0, 30.0  # GMM KL clamp


def _cat(*parts):
    parts = [p for p in parts if p is not None]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _log_normal(x, mean, logvar):
    """Diagonal Gaussian log-density, summed over the last dim."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) * torch.exp(-logvar)).sum(-1)


def kl_normal_standard(mean, logvar):
    """KL(N(mean, e^logvar) || N(0, 1)) summed over latent dims, mean over batch."""
    return (-0.5 * (1.0 + logvar - mean.pow(2) - logvar.exp()).sum(-1)).mean()


def kl_normal_normal(mean, logvar, p_mean, p_logvar):
    """KL(N(mean, e^logvar) || N(p_mean, e^p_logvar)) summed over latent dims, mean over batch."""
    kl = 0.5 * (p_logvar - logvar + (logvar.exp() + (mean - p_mean).pow(2)) * torch.exp(-p_logvar) - 1.0)
    return kl.sum(-1).mean()


class VAE(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, condition_dim: int = 0, goal_dim: int = 0,
                 latent_dim: int = 14, encoder_layer_dims: Sequence[int] = (300, 400),
                 decoder_layer_dims: Sequence[int] = (300, 400), decoder_is_conditioned: bool = True,
                 decoder_reconstruction_sum_across_elements: bool = False, latent_clip: float | None = None,
                 output_squash: bool = False, prior: str = "normal", prior_learn: bool = False,
                 prior_is_conditioned: bool = False, prior_layer_dims: Sequence[int] = (300, 400),
                 prior_gmm_num_modes: int = 10, prior_gmm_learn_weights: bool = False,
                 prior_categorical_dim: int = 10, prior_categorical_gumbel_softmax_hard: bool = False):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}: expected one of {PRIORS}")
        if prior in ("gaussian", "gmm") and not prior_learn:
            raise ValueError(f"a {prior!r} prior must be learned (prior_learn=True); prior='normal' is N(0, 1)")
        if prior_is_conditioned and not prior_learn:
            raise ValueError("a conditioned prior must be learned: set prior_learn=True")
        if prior == "normal" and prior_learn:
            raise ValueError("prior='normal' is the fixed N(0, 1); use prior='gaussian' for a learned Gaussian")
        if prior_is_conditioned and condition_dim + goal_dim == 0:
            raise ValueError("prior_is_conditioned needs condition_dim or goal_dim > 0")
        if not decoder_is_conditioned and condition_dim + goal_dim > 0 and not prior_is_conditioned:
            raise ValueError("an unconditioned decoder needs a conditioned prior (prior_is_conditioned=True)")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.condition_dim, self.goal_dim, self.latent_dim = condition_dim, goal_dim, latent_dim
        self.decoder_is_conditioned = decoder_is_conditioned
        self.sum_across_elements = decoder_reconstruction_sum_across_elements
        self.latent_clip, self.output_squash = latent_clip, output_squash
        self.prior, self.prior_learn, self.prior_is_conditioned = prior, prior_learn, prior_is_conditioned
        self.num_modes = prior_gmm_num_modes if prior == "gmm" else 1
        self.gmm_learn_weights = prior == "gmm" and prior_gmm_learn_weights
        self.categorical_dim = prior_categorical_dim if prior == "categorical" else 1
        self.gumbel_hard = prior_categorical_gumbel_softmax_hard
        self.gumbel_temperature = 1.0

        cats = prior == "categorical"
        z_dim = latent_dim * self.categorical_dim
        self.z_dim = z_dim
        self.encoder = mlp(input_dim + condition_dim + goal_dim, z_dim if cats else 2 * latent_dim,
                           encoder_layer_dims)
        dec_in = z_dim + (condition_dim + goal_dim if decoder_is_conditioned else 0)
        self.decoder = mlp(dec_in, output_dim, decoder_layer_dims)

        # learned prior: one flat parameter vector per row (free, or an MLP of cat(condition, goal))
        if cats:
            n_prior = z_dim if prior_learn else 0
        elif prior in ("gaussian", "gmm"):
            n_prior = 2 * self.num_modes * latent_dim + (self.num_modes if self.gmm_learn_weights else 0)
        else:
            n_prior = 0
        self.prior_net, self.prior_params = None, None
        if n_prior and prior_is_conditioned:
            self.prior_net = mlp(condition_dim + goal_dim, n_prior, prior_layer_dims)
        elif n_prior:
            init = torch.zeros(n_prior)
            if prior == "gmm":  # spread the mode means so the modes are not symmetric
                init[:self.num_modes * latent_dim] = torch.randn(self.num_modes * latent_dim)
            self.prior_params = nn.Parameter(init)

    @property
    def _device(self):
        return self.encoder[0].weight.device

    # --- Gumbel temperature --------------------------------------------------------------------------
    def set_gumbel_temperature(self, temperature: float):
        self.gumbel_temperature = float(temperature)

    def get_gumbel_temperature(self) -> float:
        return self.gumbel_temperature

    # --- prior ---------------------------------------------------------------------------------------
    def prior_parameters(self, n: int, condition=None, goal=None) -> dict:
        """Prior parameters for ``n`` rows (``condition``/``goal`` have ``n`` rows when the prior is conditioned):
        Gaussian/GMM ``{means [n, M, L], logvars [n, M, L], logweights [n, M]}``, categorical
        ``{logits [n, L, C]}``; ``{}`` for N(0, 1)."""
        L, M, C = self.latent_dim, self.num_modes, self.categorical_dim
        if self.prior == "normal":
            return {}
        if self.prior_net is not None:
            flat = self.prior_net(_cat(condition, goal))
        elif self.prior_params is not None:
            flat = self.prior_params.expand(n, -1)
        else:  # uniform categorical
            return {"logits": torch.zeros(n, L, C, device=self._device)}
        if self.prior == "categorical":
            return {"logits": flat.reshape(n, L, C)}
        means = flat[:, :M * L].reshape(n, M, L)
        logvars = flat[:, M * L:2 * M * L].reshape(n, M, L)
        if self.gmm_learn_weights:
            logweights = F.log_softmax(flat[:, 2 * M * L:], dim=-1)
        else:
            logweights = torch.full((n, M), -math.log(M), device=flat.device, dtype=flat.dtype)
        return {"means": means, "logvars": logvars, "logweights": logweights}

    def _rows(self, condition, goal):
        ref = condition if condition is not None else goal
        return None if ref is None else ref.shape[0]

    def sample_prior(self, n: int, condition=None, goal=None) -> torch.Tensor:
        """Latents from the prior. With ``condition``/``goal`` of ``B`` rows: ``n`` samples per row, returned as
        ``[B * n, z_dim]`` with row ``b * n + j`` the ``j``-th sample of row ``b`` (``.view(B, n, -1)``);
        without: ``[n, z_dim]``. ``z_dim`` is ``latent_dim`` (``latent_dim * categorical_dim`` for the
        categorical prior). ``latent_clip`` clamps continuous samples."""
        B = self._rows(condition, goal)
        if B is None and self.prior_is_conditioned:
            raise ValueError("this VAE's prior is conditioned: sample_prior needs condition/goal")
        N = n if B is None else B * n
        if self.prior_is_conditioned and n > 1:
            condition = None if condition is None else condition.repeat_interleave(n, 0)
            goal = None if goal is None else goal.repeat_interleave(n, 0)
        device = self._device
        if self.prior == "normal":
            z = torch.randn(N, self.latent_dim, device=device)
        elif self.prior == "categorical":
            C = self.categorical_dim
            if not self.prior_learn and self.latent_dim == 1 and C <= N:
                idx = (torch.arange(N, device=device) % C).unsqueeze(-1)  # cover every class
            else:
                logits = self.prior_parameters(N, condition, goal)["logits"]
                idx = torch.distributions.Categorical(logits=logits).sample()
            return F.one_hot(idx, C).to(self.encoder[0].weight.dtype).reshape(N, -1)
        else:
            p = self.prior_parameters(N, condition, goal)
            mode = torch.distributions.Categorical(logits=p["logweights"]).sample()  # [N]
            rows = torch.arange(N, device=device)
            mean, logvar = p["means"][rows, mode], p["logvars"][rows, mode].clamp(LOGVAR_MIN, LOGVAR_MAX)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        if self.latent_clip is not None:
            z = z.clamp(-self.latent_clip, self.latent_clip)
        return z

    def kl_loss(self, encoder_params: dict, z: torch.Tensor, condition=None, goal=None) -> torch.Tensor:
        """KL(q(z | x, c, g) || p(z | c, g)), summed over latent dims, averaged over the batch (Monte-Carlo at
        ``z`` for the GMM prior)."""
        if self.prior == "categorical":
            logq = F.log_softmax(encoder_params["logit"], dim=-1)
            logp = F.log_softmax(self.prior_parameters(logq.shape[0], condition, goal)["logits"], dim=-1)
            return (logq.exp() * (logq - logp)).sum((-2, -1)).mean()
        mean, logvar = encoder_params["mean"], encoder_params["logvar"]
        if self.prior == "normal":
            return kl_normal_standard(mean, logvar)
        p = self.prior_parameters(mean.shape[0], condition, goal)
        if self.prior == "gaussian":
            return kl_normal_normal(mean, logvar, p["means"][:, 0], p["logvars"][:, 0])
        log_q = _log_normal(z, mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
        log_p_modes = _log_normal(z.unsqueeze(1), p["means"], p["logvars"].clamp(LOGVAR_MIN, LOGVAR_MAX))
        log_p = torch.logsumexp(p["logweights"] + log_p_modes, dim=-1)
        return (log_q - log_p).mean()

    # --- encoder / decoder ---------------------------------------------------------------------------
    def encode(self, inputs, condition=None, goal=None) -> dict:
        out = self.encoder(_cat(inputs, condition, goal))
        if self.prior == "categorical":
            return {"logit": out.reshape(-1, self.latent_dim, self.categorical_dim)}
        mean, logvar = out.chunk(2, dim=-1)
        return {"mean": mean, "logvar": logvar}

    def sample_posterior(self, encoder_params: dict) -> torch.Tensor:
        """Reparameterised sample: Gaussian, or Gumbel-softmax (flattened) at the current temperature."""
        if self.prior == "categorical":
            logit = encoder_params["logit"]
            y = F.gumbel_softmax(logit, tau=self.gumbel_temperature, hard=self.gumbel_hard, dim=-1)
            return y.reshape(logit.shape[0], -1)
        mean, logvar = encoder_params["mean"], encoder_params["logvar"]
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def decode(self, condition=None, goal=None, z=None, n: int | None = None) -> torch.Tensor:
        """Decoder output for latents ``z`` (``[N, z_dim]``), or for ``n`` (default 1) prior samples per row
        when ``z`` is None (layout of :meth:`sample_prior`). ``condition``/``goal`` of ``B`` rows are repeated
        to ``N`` rows (``N`` must be a multiple of ``B``, each row's block contiguous)."""
        if z is None:
            z = self.sample_prior(n or 1, condition, goal)
        if not self.decoder_is_conditioned:
            x = z
        else:
            B = self._rows(condition, goal)
            if B is not None and z.shape[0] != B:
                if z.shape[0] % B:
                    raise ValueError(f"{z.shape[0]} latents do not split evenly over {B} condition rows")
                r = z.shape[0] // B
                condition = None if condition is None else condition.repeat_interleave(r, 0)
                goal = None if goal is None else goal.repeat_interleave(r, 0)
            x = _cat(z, condition, goal)
        out = self.decoder(x)
        return torch.tanh(out) if self.output_squash else out

    def forward(self, inputs, condition=None, goal=None, freeze_encoder: bool = False, outputs=None) -> dict:
        """``inputs`` ``[B, input_dim]`` -> ``{reconstruction [B, output_dim], z, encoder_params, kl_loss,
        reconstruction_loss}``. The reconstruction target is ``outputs`` (default ``inputs``); its loss is the
        MSE averaged over elements, or the squared error summed over elements divided by ``B``.
        ``freeze_encoder`` detaches the encoder output (the encoder gets no gradient)."""
        params = self.encode(inputs, condition, goal)
        if freeze_encoder:
            params = {k: v.detach() for k, v in params.items()}
        z = self.sample_posterior(params)
        kl = self.kl_loss(params, z, condition, goal)
        recon = self.decode(condition, goal, z=z)
        target = inputs if outputs is None else outputs
        if self.sum_across_elements:
            recon_loss = (recon - target).pow(2).sum() / target.shape[0]
        else:
            recon_loss = F.mse_loss(recon, target)
        return {"reconstruction": recon, "z": z, "encoder_params": params, "kl_loss": kl,
                "reconstruction_loss": recon_loss}


class VAEActor(nn.Module):
    """BC-VAE policy (robomimic ``VAEActor``): a VAE over the action, conditioned on the observation (and the goal
    group when ``goal_shapes`` is given); the decoder output is tanh-squashed.

    * ``forward(td, freeze_encoder=False)`` -> the VAE dict for ``td["action"]`` (``reconstruction`` and ``z``
      keep the TensorDict's leading dims; the losses are scalars).
    * ``act(td, n=None)`` -> the decoding of one prior sample per row, ``[..., A]``; with ``n``, ``n`` samples
      per row, ``[..., n, A]`` (BCQ's action sampler).
    * ``dist(td)`` -> the policy's action distribution (:class:`VAEPolicyDistribution`): ``sample``, and ``rsample``
      for a continuous prior; ``distribution_ops`` says which.

    ``in_keys`` are the keys ``act`` reads; ``forward`` also reads ``"action"``.
    """

    recurrent = False

    def __init__(self, obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, goal_group: str = K.GOAL,
                 encoder: dict | None = None, **vae_kwargs):
        super().__init__()
        obs_in, goal_in = group_inputs(obs_shapes), group_inputs(None, goal_shapes, goal_group)
        self.obs_encoder = ObsEncoder(obs_in, encoder) if obs_in else None
        self.goal_encoder = ObsEncoder(goal_in, encoder) if goal_in else None
        vae_kwargs.setdefault("output_squash", True)
        self.vae = VAE(ac_dim, ac_dim,
                       condition_dim=self.obs_encoder.output_dim if self.obs_encoder else 0,
                       goal_dim=self.goal_encoder.output_dim if self.goal_encoder else 0, **vae_kwargs)
        self.ac_dim = ac_dim
        self.in_keys = (self.obs_encoder.in_keys if self.obs_encoder else []) + \
                       (self.goal_encoder.in_keys if self.goal_encoder else [])

    @property
    def is_categorical(self) -> bool:
        return self.vae.prior == "categorical"

    @property
    def distribution_ops(self) -> frozenset:
        # a categorical latent or a mixture prior's component is drawn discretely: no reparameterised sample
        return frozenset({"sample", "rsample"} if self.vae.prior in ("normal", "gaussian") else {"sample"})

    @property
    def distribution_name(self) -> str:
        return f"VAEActor (prior {self.vae.prior!r})"

    def dist(self, td):
        return VAEPolicyDistribution(self, td, self.distribution_ops, self.distribution_name)

    def set_gumbel_temperature(self, temperature: float):
        self.vae.set_gumbel_temperature(temperature)

    def get_gumbel_temperature(self) -> float:
        return self.vae.get_gumbel_temperature()

    def _conditions(self, td):
        lead = tuple(td.batch_size)
        flat = lambda enc: None if enc is None else enc(td).reshape(-1, enc.output_dim)  # noqa: E731
        return lead, flat(self.obs_encoder), flat(self.goal_encoder)

    def forward(self, td, freeze_encoder: bool = False) -> dict:
        lead, cond, goal = self._conditions(td)
        out = self.vae(td.get(K.ACTION).reshape(-1, self.ac_dim), cond, goal, freeze_encoder=freeze_encoder)
        out["reconstruction"] = out["reconstruction"].reshape(*lead, self.ac_dim)
        out["z"] = out["z"].reshape(*lead, -1)
        return out

    def act(self, td, n: int | None = None) -> torch.Tensor:
        lead, cond, goal = self._conditions(td)
        if cond is None and goal is None:  # unconditioned: one sample per TensorDict row
            z = self.vae.sample_prior(math.prod(lead) * (n or 1))
            a = self.vae.decode(z=z)
        else:
            a = self.vae.decode(cond, goal, n=n or 1)
        return a.reshape(*lead, self.ac_dim) if n is None else a.reshape(*lead, n, self.ac_dim)


def vae_kwargs_from_config(vae: dict) -> dict:
    """robomimic's ``algo.vae`` section -> :class:`VAE` keyword arguments. ``enabled``, ``kl_weight`` and the
    Gumbel temperature schedule belong to the loss and are ignored here."""
    vae = vae or {}
    dec, pr = vae.get("decoder") or {}, vae.get("prior") or {}
    learn = bool(pr.get("learn", False))
    if pr.get("use_categorical", False):
        kind = "categorical"
    elif pr.get("use_gmm", False):
        kind = "gmm"
    else:
        kind = "gaussian" if learn else "normal"
    kw = dict(prior=kind, prior_learn=learn, prior_is_conditioned=bool(pr.get("is_conditioned", False)),
              decoder_is_conditioned=bool(dec.get("is_conditioned", True)),
              decoder_reconstruction_sum_across_elements=bool(dec.get("reconstruction_sum_across_elements", False)),
              latent_clip=vae.get("latent_clip"))
    optional = {"latent_dim": vae.get("latent_dim"), "encoder_layer_dims": vae.get("encoder_layer_dims"),
                "decoder_layer_dims": vae.get("decoder_layer_dims"),
                "prior_layer_dims": vae.get("prior_layer_dims"),
                "prior_gmm_num_modes": pr.get("gmm_num_modes"), "prior_gmm_learn_weights": pr.get("gmm_learn_weights"),
                "prior_categorical_dim": pr.get("categorical_dim"),
                "prior_categorical_gumbel_softmax_hard": pr.get("categorical_gumbel_softmax_hard")}
    kw.update({k: (tuple(v) if k.endswith("layer_dims") else v) for k, v in optional.items() if v is not None})
    return kw


def vae_actor(obs_shapes: dict, ac_dim: int, goal_shapes: dict | None = None, goal_group: str = K.GOAL,
              vae: dict | None = None, encoder: dict | None = None) -> VAEActor:
    """Build the BC-VAE actor from robomimic's ``algo.vae`` config section (see :func:`vae_kwargs_from_config`)."""
    return VAEActor(obs_shapes, ac_dim, goal_shapes, goal_group, encoder, **vae_kwargs_from_config(vae))
