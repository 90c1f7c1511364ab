"""VAE evidence lower bound (robomimic BC_VAE, BCQ's action sampler): ``reconstruction + kl_weight * KL``."""
from __future__ import annotations

from modmimic import keys as K
from modmimic.keys import declare


def gumbel_temperature(epoch: int, init_temp: float = 1.0, temp_anneal_step: float = 0.001,
                       min_temp: float = 0.3) -> float:
    """robomimic's linear Gumbel-softmax annealing: ``max(init_temp - epoch * temp_anneal_step, min_temp)``."""
    return max(init_temp - epoch * temp_anneal_step, min_temp)


@declare(reads=[K.ACTION], context=("epoch",))
def vae_elbo(batch, vae, *, kl_weight: float = 1.0, epoch: int = 0, init_temp: float = 1.0,
             temp_anneal_step: float = 0.001, min_temp: float = 0.3, freeze_encoder: bool = False) -> dict:
    """Negative ELBO of ``vae(batch)`` (a :class:`VAEActor`-like module returning ``reconstruction_loss`` and
    ``kl_loss``). A categorical prior gets its Gumbel temperature for ``epoch`` first, at every batch, as in
    robomimic; ``freeze_encoder`` detaches the encoder output (BCQ's ``freeze_encoder_epoch``)."""
    if getattr(vae, "is_categorical", False):
        vae.set_gumbel_temperature(gumbel_temperature(epoch, init_temp, temp_anneal_step, min_temp))
    out = vae(batch, freeze_encoder=True) if freeze_encoder else vae(batch)
    recons, kl = out["reconstruction_loss"], out["kl_loss"]
    return {"loss": recons + kl_weight * kl, "reconstruction_loss": recons.detach(), "kl_loss": kl.detach()}
