"""AWAC (recipes/awac.yaml, components/losses/awac.py): the advantage and the clipped actor weights against closed
forms on hand-set linear critics, the actor loss against the weighted NLL written out by hand, the declared keys, the
chain MDP (critic near Q*, policy goes right), and train / save / reload / act through the command line."""
import math
import os

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torch.distributions import Independent, Normal

from modmimic import keys as K
from modmimic.components.losses import awac
from modmimic.components.losses.iql import Q_DATA_MIN
from modmimic.components.nets.value import QEnsemble
from modmimic.config import compose
from modmimic.data.synthetic import chain_obs, chain_optimal_q, make_chain_dataset
from modmimic.policy import policy_from_checkpoint
from test_offline_rl_recipes import build, chain_values, train


def linear_critic():
    """Two linear members on (s, a): Q_1 = s + 2a, Q_2 = 0.5 s + a + 0.5."""
    q = QEnsemble({"x": (1,)}, 1, layer_dims=())
    with torch.no_grad():
        for i, (w, b) in enumerate([([1.0, 2.0], 0.0), ([0.5, 1.0], 0.5)]):  # stacked: weight [N, in, out]
            q.layers[0].weight[i].copy_(torch.tensor([w]).t())
            q.layers[0].bias[i].fill_(b)
    return q


class FixedSamples:
    """A policy 'distribution' whose samples are given: ``actions`` ``[B, n, A]``."""

    def __init__(self, actions):
        self.actions = actions

    def sample(self, shape):
        assert tuple(shape) == (self.actions.shape[1],)
        return self.actions.transpose(0, 1)


# s = (0, 1, 2), data actions (0.5, -1, 1); pi's samples at each state (0, 1), (0.5, 0.5), (-1, 0)
BATCH = TensorDict({K.obs("x"): torch.tensor([[0.0], [1.0], [2.0]]), K.ACTION: torch.tensor([[0.5], [-1.0], [1.0]])},
                   [3])
SAMPLES = torch.tensor([[[0.0], [1.0]], [[0.5], [0.5]], [[-1.0], [0.0]]])
# min(Q_1, Q_2) at the data: min(1, 1), min(-1, 0), min(4, 2.5); V: mean(min(0, .5), min(2, 1.5)) = .75, 1.5, .75
Q_DATA, V = torch.tensor([[1.0], [-1.0], [2.5]]), torch.tensor([[0.75], [1.5], [0.75]])
ADV = torch.tensor([0.25, -2.5, 1.75])


def test_advantage_closed_form():
    out = awac.advantage(BATCH, lambda td: FixedSamples(SAMPLES), linear_critic(), num_action_samples=2)
    assert set(out) == {Q_DATA_MIN, awac.V_PI}
    torch.testing.assert_close(out[Q_DATA_MIN], Q_DATA)
    torch.testing.assert_close(out[awac.V_PI], V)
    one = awac.advantage(BATCH, lambda td: FixedSamples(SAMPLES[:, :1]), linear_critic())  # a' = 0, .5, -1
    torch.testing.assert_close(one[awac.V_PI], torch.tensor([[0.0], [1.5], [0.0]]))
    with pytest.raises(ValueError, match="num_action_samples"):
        awac.advantage(BATCH, lambda td: FixedSamples(SAMPLES), linear_critic(), num_action_samples=0)


class LinearGaussian(nn.Module):
    """pi(a|s) = N(k * s, 0.5^2), one learnable k."""

    def __init__(self, k=0.3):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, td):
        return Independent(Normal(self.k * td.get(K.obs("x")), 0.5), 1)


def test_actor_loss_is_the_clipped_weighted_nll_by_hand():
    batch = BATCH.clone()
    batch[Q_DATA_MIN], batch[awac.V_PI] = Q_DATA, V
    pi = LinearGaussian()
    out = awac.awac_actor(batch, pi, beta=0.5, max_weight=20.0)
    # weights exp(A / 0.5) = exp(.5), exp(-5), exp(3.5) = 33.1 -> clipped to 20
    w = [math.exp(0.5), math.exp(-5.0), 20.0]
    s, a = [0.0, 1.0, 2.0], [0.5, -1.0, 1.0]
    log_pi = [-0.5 * ((ai - 0.3 * si) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi) for si, ai in zip(s, a)]
    expected = -sum(wi * li for wi, li in zip(w, log_pi)) / 3
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["adv_weight"].item() == pytest.approx(sum(w) / 3, rel=1e-6)
    assert out["adv"].item() == pytest.approx(ADV.mean().item(), rel=1e-6)
    # the weights are constants: d loss / d k = -mean(w * (a - k s) s / 0.25)
    out["loss"].backward()
    grad = -sum(wi * (ai - 0.3 * si) * si / 0.25 for wi, si, ai in zip(w, s, a)) / 3
    assert pi.k.grad.item() == pytest.approx(grad, rel=1e-5)
    # no clip: the raw exp(A / beta), beyond IQL's final clip at 100 too
    free = awac.awac_actor(batch, pi, beta=0.25, max_weight=None)
    assert free["adv_weight"].item() == pytest.approx((math.exp(1) + math.exp(-10) + math.exp(7)) / 3, rel=1e-6)
    for bad in ({"beta": 0.0}, {"max_weight": 0.0}):
        with pytest.raises(ValueError, match="algo.adv"):
            awac.awac_actor(batch, pi, **bad)


def test_declared_keys():
    assert awac.advantage.reads == (K.OBS, K.ACTION) and awac.advantage.writes == (Q_DATA_MIN, awac.V_PI)
    assert awac.advantage.needs == {"policy": ("sample",)} and awac.advantage.context == ()
    assert K.bound_keys(awac.awac_actor.reads, {"q_key": "q_data_min", "value_key": "v_pi"}) == \
        [K.OBS, K.ACTION, "q_data_min", "v_pi"]
    assert awac.awac_actor.writes == () and awac.awac_actor.needs == {"policy": ("log_prob",)}


def test_recipe_defaults_and_order():
    c = compose("awac")
    assert (c.algo_name, c.recipe_name) == ("awac", "awac")
    assert (c.algo.discount, c.algo.target_tau, c.algo.critic.ensemble.n) == (0.99, 0.005, 2)
    assert (c.algo.adv.beta, c.algo.adv.max_weight, c.algo.adv.num_action_samples) == (1.0, 20.0, 1)
    assert set(c.algo.optim_params) == {"critic", "actor"}
    assert [u.name for u in c.updates] == ["critic", "actor"]
    assert [p.fn.rsplit(".", 1)[1] for p in c.prepare] == ["policy_target", "advantage"]


# --- the chain MDP -------------------------------------------------------------------------------------------

N_STATES, GAMMA = 5, 0.9
# beta is the advantage's temperature: at the chain's advantage scale (~0.1) beta = 1 is plain BC of the behaviour
# policy (whose Q is not Q*); beta = 0.05 lets the weights pick the better action
CHAIN = ["observation.modalities.obs.low_dim=[state]", f"algo.discount={GAMMA}", "train.batch_size=64",
         "algo.critic.layer_dims=[64,64]", "algo.actor.layer_dims=[64,64]", "algo.target_tau=0.05",
         "algo.adv.beta=0.05", "algo.optim_params.critic.learning_rate.initial=3e-3",
         "algo.optim_params.actor.learning_rate.initial=3e-3"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("chain") / "chain.hdf5")
    make_chain_dataset(path, n_states=N_STATES, seed=0)
    return path


@pytest.mark.parametrize("steps, tol", [(600, 0.05), pytest.param(4000, 0.03, marks=pytest.mark.slow)])
def test_critic_learns_the_optimal_q_of_a_chain_and_the_policy_goes_right(chain, steps, tol):
    _, sampler, algo = build(compose("awac", CHAIN), chain)
    log = train(algo, sampler, steps)
    assert np.isfinite(log["Loss"]) and log["actor/adv_weight"] <= 20.0
    q, act = chain_values(algo)
    err = np.abs(q - chain_optimal_q(N_STATES, GAMMA)).max()
    assert err < tol, q.round(3)
    assert (q[:, 1] > q[:, 0]).all()
    assert (act > 0.3).all(), act  # the behaviour policy's mean action is 0.24


def test_cli_trains_saves_reloads_and_acts(chain, tmp_path, monkeypatch):
    from modmimic.train import main

    monkeypatch.chdir(tmp_path)
    n = torch.get_num_threads()
    try:
        rc = main(["recipe=awac", f"dataset={chain}", "train.num_epochs=2", "experiment.epoch_every_n_steps=3",
                   "train.batch_size=16", "observation.modalities.obs.low_dim=[state]",
                   "experiment.rollout.enabled=false", "experiment.save.every_n_epochs=1", "train.output_dir=out",
                   "algo.critic.layer_dims=[16]", "algo.actor.layer_dims=[16]", "algo.adv.num_action_samples=3"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    (name,) = os.listdir(tmp_path / "out")
    (run,) = os.listdir(tmp_path / "out" / name)
    models = tmp_path / "out" / name / run / "models"
    assert {"last.pth", "model_epoch_1.pth", "model_epoch_2.pth"} <= set(os.listdir(models))
    policy, ckpt = policy_from_checkpoint(ckpt_path=str(models / "last.pth"))
    assert ckpt["recipe_name"] == "awac" and ckpt["variable_state"]["epoch"] == 2
    assert ckpt["config"]["algo"]["adv"]["num_action_samples"] == 3
    policy.start_episode(4)
    obs = {"state": chain_obs(np.arange(4))}
    act = policy(obs, batched_ob=True)
    assert act.shape == (4, 1) and np.isfinite(act).all() and (np.abs(act) <= 1).all()
    policy.start_episode(4)
    assert np.array_equal(policy(obs, batched_ob=True), act)  # low-noise evaluation: the actor's mean
