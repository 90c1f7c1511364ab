"""CQL with advantage-weighted policy extraction (recipes/cql_awr.yaml): cql's critic update unchanged, AWAC's actor
on that critic; on the chain MDP the critic learns Q* at a small penalty weight, a larger weight lowers every value
(conservatism) without changing which action is better, and the actor takes the better action."""
import numpy as np
import pytest

from modmimic.config import compose
from modmimic.data.synthetic import chain_optimal_q, make_chain_dataset
from test_offline_rl_recipes import GAMMA, N_STATES, build, chain_config, chain_values, train


def test_the_critic_update_is_cqls_and_the_actor_is_awacs():
    c, q, a = compose("cql_awr"), compose("cql"), compose("awac")
    assert (c.algo_name, c.recipe_name) == ("cql_awr", "cql_awr")
    assert [u.name for u in c.updates] == ["actor", "critic"]
    actor, critic = c.updates
    assert critic == q.updates[1]  # the same prepare, losses, optimizers and targets
    assert {n: c.losses[n] for n in ("critic", "cql")} == {n: q.losses[n] for n in ("critic", "cql")}
    assert c.nets.critic == q.nets.critic and c.targets == q.targets
    assert "entropy" not in c.losses and dict(actor.losses) == {"actor": 1.0} and actor.optimizer == "actor"
    (prep,) = actor.prepare
    assert prep.fn == a.prepare[1].fn and dict(prep.nets) == {"policy": "actor", "critic": "critic"}
    assert c.losses.actor.fn == a.losses.actor.fn and dict(c.losses.actor.nets) == {"policy": "actor"}
    assert (c.algo.adv.beta, c.algo.adv.max_weight) == (0.1, 100.0)
    f = compose("cql_awr", ["preset=fast"])
    assert (f.algo.critic.cql_weight, f.algo.critic.target_q_gap, f.algo.critic.importance_sampling) == (0.01, None,
                                                                                                        False)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("chain") / "chain.hdf5")
    make_chain_dataset(path, n_states=N_STATES, seed=0)
    return path


# beta 0.05 as AWAC's chain test (the chain's advantages are ~0.1); a fixed penalty weight
CHAIN = ["algo.actor.layer_dims=[64,64]", "algo.target_tau=0.1", "algo.adv.beta=0.05", "algo.critic.target_q_gap=null",
         "algo.optim_params.critic.learning_rate.initial=3e-3", "algo.optim_params.actor.learning_rate.initial=3e-3"]


def chain_run(chain, weight, steps=600):
    _, sampler, algo = build(chain_config("cql_awr", *CHAIN, f"algo.critic.cql_weight={weight}"), chain)
    log = train(algo, sampler, steps)
    assert np.isfinite(log["Loss"]) and log["actor/adv_weight"] <= 100.0
    return chain_values(algo)


def test_chain_q_star_the_better_action_and_conservatism(chain):
    true = chain_optimal_q(N_STATES, GAMMA)
    q, act = chain_run(chain, 0.001)
    assert np.abs(q - true).max() < 0.06, q.round(3)  # seeds 0-2: 0.015-0.038
    assert (q[:, 1] > q[:, 0]).all() and (act > 0.3).all(), act  # the behaviour policy's mean action is 0.24
    q_c, act_c = chain_run(chain, 0.05)
    assert q_c.mean() < q.mean() - 0.05, (q_c.round(3), q.round(3))  # the penalty lowers the values
    assert (q_c[:, 1] > q_c[:, 0]).all() and (act_c > 0.3).all(), act_c
