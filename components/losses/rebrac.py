"""ReBRAC's actor (Tarasov et al. 2023, "Revisiting the Minimalist Approach to Offline RL"): TD3-BC with the BC
term as a summed squared distance weighted by ``bc_coef`` and the Q term from the ensemble's min. The critic's own
penalty is the TD3 target's (:func:`~modmimic.components.losses.critic.actor_target` with ``bc_coef`` and the data's
next action); its LayerNorm is the Q ensemble's ``layer_norm``."""
from __future__ import annotations

from modmimic import keys as K
from modmimic.keys import declare


@declare(reads=[K.ACTION])
def rebrac_actor(batch, actor, critic, bc_coef: float = 1.0, normalize_q: bool = True) -> dict:
    """``mean(bc_coef * ||pi(s) - a||^2 - lambda * min_i Q_i(s, pi(s)))`` with ``lambda = 1 / mean|min_i Q_i|``
    (detached) when ``normalize_q``, else 1."""
    a = actor(batch)
    q = critic(batch, a).min(0).values  # [B, 1]
    lam = 1.0 / q.abs().mean().detach() if normalize_q else q.new_tensor(1.0)
    bc = (a - batch.get(K.ACTION)).pow(2).sum(-1, keepdim=True)
    loss = (bc_coef * bc - lam * q).mean()
    return {"loss": loss, "bc_loss": bc.detach().mean(), "lambda": lam, "q": q.detach().mean()}
