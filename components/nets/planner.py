"""Subgoal planners of the hierarchical recipes (robomimic GL / GL_VAE): networks that, given the current
observation (and goal), predict or sample a future observation, the *subgoal*.

Both planners read ``("observation", k)`` (and ``(goal_group, k)``) from a ``[B]`` TensorDict and speak subgoals as
the group ``("subgoal", k)`` of :mod:`modmimic.keys`, over the planner's ``subgoal_shapes`` (flat low-dim keys):

* ``get_subgoal_predictions(td) -> TensorDict [B]`` — one subgoal per row (the HBC/IRIS acting paths call this);
* ``sample_subgoals(td, n) -> TensorDict [B, n]`` — ``n`` candidate subgoals per row (ValuePlanner scores them);
* ``forward(td)`` — the training output that the planner losses (:mod:`modmimic.components.losses.planner`) read.

:class:`GLPlanner` is robomimic's deterministic goal network (``MIMO_MLP``: ReLU MLP over obs (+goal) with an
activation after its last layer, then one linear output per subgoal key; the per-key linears are one ``Linear``
here, split by key). :class:`GLVAEPlanner` is the conditional VAE ``p(subgoal | obs, goal)`` of GL_VAE on top of
:class:`modmimic.components.nets.vae.VAE`, with every prior it offers, optional *latent subgoals* (the actor is
conditioned on the VAE latent instead of a decoded observation) and robomimic's *prior correction*.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from modmimic import keys as K
from modmimic.components.nets.core import ObsEncoder, group_inputs, mlp
from modmimic.components.nets.vae import VAE, vae_kwargs_from_config

LATENT_SUBGOAL = "latent_subgoal"  # ("subgoal", "latent_subgoal"): the VAE latent used as the actor's goal


def resolve_subgoal_shapes(obs_shapes: dict, goal_shapes: dict | None = None, subgoal_keys=None,
                           subgoal_shapes: dict | None = None) -> dict:
    """``{key: shape}`` of the subgoal keys, in sorted order.

    ``subgoal_keys`` is a list of keys or robomimic's ``observation.modalities.subgoal`` section (``{modality:
    [keys]}``); ``None`` means every observation key. Shapes come from ``subgoal_shapes`` when given, else from the
    observation (then goal) shapes: a subgoal is a future observation, so its keys must be observation keys."""
    if isinstance(subgoal_keys, dict):
        keys = []
        for ks in subgoal_keys.values():
            keys += [k for k in (ks or []) if k not in keys]
    elif subgoal_keys is None:
        keys = list(subgoal_shapes or obs_shapes)
    else:
        keys = list(subgoal_keys)
    if not keys:
        raise ValueError("the planner has no subgoal keys: set observation.modalities.subgoal")
    known = {**(goal_shapes or {}), **obs_shapes, **(subgoal_shapes or {})}
    out = {}
    for k in keys:
        if k not in known:
            raise ValueError(f"subgoal key {k!r} is not an observation key of this network "
                             f"(observation keys: {sorted(known)}); subgoals are future observations, so every "
                             "observation.modalities.subgoal key must also be observed")
        shape = tuple(known[k])
        if len(shape) != 1:
            raise ValueError(f"subgoal key {k!r} has shape {shape}: planners predict flat (low-dim) subgoals")
        out[k] = shape
    return dict(sorted(out.items()))


def _split(flat: torch.Tensor, shapes: dict) -> dict:
    """``[..., D]`` -> ``{key: [..., d_k]}`` in ``shapes`` order."""
    parts = torch.split(flat, [s[0] for s in shapes.values()], dim=-1)
    return dict(zip(shapes, parts))


def subgoal_td(parts: dict, batch_size, device=None) -> TensorDict:
    """``{key: tensor}`` -> a TensorDict with the group ``("subgoal", key)``."""
    return TensorDict({K.SUBGOAL: parts}, batch_size=batch_size, device=device)


class GLPlanner(nn.Module):
    """Deterministic goal network (robomimic GL): ``subgoal = Linear(ReLU-MLP(cat(obs, goal)))`` per key.

    ``forward(td) -> {key: [..., d_k]}`` (plain dict; any leading dims)."""

    def __init__(self, obs_shapes: dict, subgoal_shapes: dict, goal_shapes: dict | None = None,
                 layer_dims: Sequence[int] = (300, 400), goal_group: str = K.GOAL, encoder: dict | None = None):
        super().__init__()
        if not layer_dims:
            raise ValueError("the GL goal network needs at least one hidden layer (algo.ae.planner_layer_dims)")
        self.subgoal_shapes = dict(subgoal_shapes)
        self.encoder = ObsEncoder(group_inputs(obs_shapes, goal_shapes, goal_group), encoder)
        self.trunk = mlp(self.encoder.output_dim, 0, layer_dims)  # ends with its activation, as MIMO_MLP
        self.head = nn.Linear(layer_dims[-1], sum(s[0] for s in self.subgoal_shapes.values()))
        self.in_keys = self.encoder.in_keys

    def forward(self, td) -> dict:
        return _split(self.head(self.trunk(self.encoder(td))), self.subgoal_shapes)

    @property
    def actor_goal_shapes(self) -> dict:
        """What an actor fed by this planner reads as its goal: the subgoal keys."""
        return dict(self.subgoal_shapes)

    def get_subgoal_predictions(self, td) -> TensorDict:
        return subgoal_td(self(td), td.batch_size, td.device)

    def sample_subgoals(self, td, n: int = 1) -> TensorDict:
        """The deterministic prediction repeated ``n`` times: ``[B, n]`` (robomimic tiles the observation)."""
        pred = self.get_subgoal_predictions(td)
        return pred.unsqueeze(1).expand(pred.batch_size[0], n).clone()


class GLVAEPlanner(nn.Module):
    """GL_VAE: a conditional VAE over the concatenated subgoal vector (keys sorted), conditioned on the observation
    encoder's output (and the goal group's).

    * ``forward(td, freeze_encoder=False)`` -> the VAE dict for ``td``'s ``("subgoal", k)`` targets, with robomimic's
      per-key reconstruction loss (per-key MSE averaged over keys, or squared errors summed over elements / B);
      ``reconstruction`` is a ``{key: tensor}`` dict.
    * ``sample_subgoals(td, n)`` decodes ``n`` prior samples per row -> ``[B, n]`` TensorDict of ``("subgoal", k)``.
    * ``get_subgoal_predictions(td)``: one decoded prior sample per row, or, with ``latent_subgoal=True``, one prior
      latent per row as ``("subgoal", "latent_subgoal")``.
    * ``latent_subgoals(td, prior_correction=False, num_prior_samples=100)``: the actor's training goal in latent
      mode — the posterior latent of ``td``'s subgoal, or (prior correction) the nearest of ``num_prior_samples``
      prior samples to it.

    ``is_categorical`` / ``set_gumbel_temperature`` make it a drop-in for :func:`~modmimic.components.losses.vae.vae_elbo`.
    """

    recurrent = False

    def __init__(self, obs_shapes: dict, subgoal_shapes: dict, goal_shapes: dict | None = None,
                 goal_group: str = K.GOAL, latent_subgoal: bool = False, encoder: dict | None = None,
                 **vae_kwargs):
        super().__init__()
        self.subgoal_shapes = dict(subgoal_shapes)
        self.subgoal_keys = [(K.SUBGOAL, k) for k in self.subgoal_shapes]
        self.subgoal_dim = sum(s[0] for s in self.subgoal_shapes.values())
        obs_in, goal_in = group_inputs(obs_shapes), group_inputs(None, goal_shapes, goal_group)
        if not obs_in:
            raise ValueError("GL_VAE conditions on the observation: observation.modalities.obs is empty")
        self.obs_encoder = ObsEncoder(obs_in, encoder)
        self.goal_encoder = ObsEncoder(goal_in, encoder) if goal_in else None
        self.vae = VAE(self.subgoal_dim, self.subgoal_dim, condition_dim=self.obs_encoder.output_dim,
                       goal_dim=self.goal_encoder.output_dim if self.goal_encoder else 0, **vae_kwargs)
        self.latent_subgoal = bool(latent_subgoal)
        self.in_keys = self.obs_encoder.in_keys + (self.goal_encoder.in_keys if self.goal_encoder else [])

    @property
    def latent_dim(self) -> int:
        """Width of a latent subgoal (``latent_dim * categorical_dim`` for the categorical prior)."""
        return self.vae.z_dim

    @property
    def actor_goal_shapes(self) -> dict:
        """What an actor fed by this planner reads as its goal: the subgoal keys, or ``latent_subgoal`` in latent
        mode (robomimic rewrites the actor's goal shapes the same way)."""
        return {LATENT_SUBGOAL: (self.latent_dim,)} if self.latent_subgoal else dict(self.subgoal_shapes)

    @property
    def is_categorical(self) -> bool:
        return self.vae.prior == "categorical"

    def set_gumbel_temperature(self, temperature: float):
        self.vae.set_gumbel_temperature(temperature)

    def get_gumbel_temperature(self) -> float:
        return self.vae.get_gumbel_temperature()

    def _conditions(self, td):
        cond = self.obs_encoder(td)
        goal = self.goal_encoder(td) if self.goal_encoder is not None else None
        return cond, goal

    def _subgoal_vector(self, td) -> torch.Tensor:
        parts = [td.get(k) for k in self.subgoal_keys]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, td, freeze_encoder: bool = False) -> dict:
        if td.batch_dims != 1:
            raise ValueError(f"GL_VAE trains on [B] batches, got batch size {tuple(td.batch_size)}")
        cond, goal = self._conditions(td)
        x = self._subgoal_vector(td)
        out = self.vae(x, cond, goal, freeze_encoder=freeze_encoder)
        recon = _split(out["reconstruction"], self.subgoal_shapes)
        target = _split(x, self.subgoal_shapes)
        if self.vae.sum_across_elements:
            loss = sum((recon[k] - target[k]).pow(2).sum() for k in recon) / x.shape[0]
        else:
            loss = sum(F.mse_loss(recon[k], target[k]) for k in recon) / len(recon)
        out["reconstruction"], out["reconstruction_loss"] = recon, loss
        return out

    # --- sampling ----------------------------------------------------------------------------------------------
    def sample_subgoals(self, td, n: int = 1) -> TensorDict:
        B = td.batch_size[0]
        cond, goal = self._conditions(td)
        flat = self.vae.decode(cond, goal, n=n)  # [B * n, D], row b * n + j
        return subgoal_td(_split(flat.reshape(B, n, self.subgoal_dim), self.subgoal_shapes), [B, n], td.device)

    def sample_prior(self, td, n: int = 1) -> torch.Tensor:
        """``n`` prior latents per row: ``[B, n, latent_dim]``."""
        cond, goal = self._conditions(td)
        return self.vae.sample_prior(n, cond, goal).reshape(td.batch_size[0], n, -1)

    def get_subgoal_predictions(self, td) -> TensorDict:
        if self.latent_subgoal:
            z = self.sample_prior(td, 1)[:, 0]
            return subgoal_td({LATENT_SUBGOAL: z}, td.batch_size, td.device)
        return self.sample_subgoals(td, 1)[:, 0]

    def posterior_latent(self, td) -> torch.Tensor:
        """A posterior sample ``z ~ q(z | subgoal, obs, goal)`` for ``td``'s ``("subgoal", k)``: ``[B, latent_dim]``."""
        cond, goal = self._conditions(td)
        return self.vae.sample_posterior(self.vae.encode(self._subgoal_vector(td), cond, goal))

    @torch.no_grad()
    def latent_subgoals(self, td, prior_correction: bool = False, num_prior_samples: int = 100) -> torch.Tensor:
        """The latent the actor trains on (robomimic ``get_actor_goal_for_training_from_processed_batch`` with
        ``use_latent_subgoals``): the posterior latent, or with ``prior_correction`` the nearest (L2) of
        ``num_prior_samples`` prior samples drawn for the same observation."""
        z = self.posterior_latent(td)
        if not prior_correction:
            return z
        return nearest_prior_sample(z, self.sample_prior(td, num_prior_samples))


def nearest_prior_sample(posterior_z: torch.Tensor, prior_z: torch.Tensor) -> torch.Tensor:
    """Prior correction: for each row ``b``, the sample ``prior_z[b, j]`` closest in L2 to ``posterior_z[b]``.
    ``posterior_z`` ``[B, Z]``, ``prior_z`` ``[B, N, Z]`` -> ``[B, Z]``."""
    dist = (prior_z - posterior_z.unsqueeze(1)).pow(2).sum(-1)
    best = dist.argmin(dim=1)
    return prior_z[torch.arange(prior_z.shape[0], device=prior_z.device), best]


# --- builders (named by recipes under ``nets``) ----------------------------------------------------------------

def gl_planner(obs_shapes: dict, ac_dim: int | None = None, goal_shapes: dict | None = None, subgoal_keys=None,
               subgoal_shapes: dict | None = None, layer_dims: Sequence[int] = (300, 400),
               goal_group: str = K.GOAL, latent_subgoal: bool = False, encoder: dict | None = None) -> GLPlanner:
    """robomimic GL's ``goal_network``: ``subgoal_keys`` is ``observation.modalities.subgoal`` (default: every
    observation key), ``layer_dims`` is ``algo.ae.planner_layer_dims``. ``ac_dim`` is unused (planners predict
    observations). ``latent_subgoal`` must stay off: a deterministic planner has no latent."""
    if latent_subgoal:
        raise ValueError("latent subgoals need a GL-VAE planner (algo.vae.enabled=true); GL has no latent space")
    shapes = resolve_subgoal_shapes(obs_shapes, goal_shapes, subgoal_keys, subgoal_shapes)
    return GLPlanner(obs_shapes, shapes, goal_shapes, tuple(layer_dims), goal_group, encoder)


def gl_vae_planner(obs_shapes: dict, ac_dim: int | None = None, goal_shapes: dict | None = None,
                   subgoal_keys=None, subgoal_shapes: dict | None = None, vae: dict | None = None,
                   latent_subgoal: bool = False, goal_group: str = K.GOAL,
                   encoder: dict | None = None) -> GLVAEPlanner:
    """robomimic GL_VAE's ``goal_network`` from the ``algo.vae`` section (every prior option, see
    :func:`~modmimic.components.nets.vae.vae_kwargs_from_config`); ``latent_subgoal`` is
    ``algo.latent_subgoal.enabled`` of a hierarchical recipe."""
    shapes = resolve_subgoal_shapes(obs_shapes, goal_shapes, subgoal_keys, subgoal_shapes)
    return GLVAEPlanner(obs_shapes, shapes, goal_shapes, goal_group, latent_subgoal, encoder,
                        **vae_kwargs_from_config(vae))


__all__ = ["GLPlanner", "GLVAEPlanner", "LATENT_SUBGOAL", "gl_planner", "gl_vae_planner", "nearest_prior_sample",
           "resolve_subgoal_shapes", "subgoal_td"]
