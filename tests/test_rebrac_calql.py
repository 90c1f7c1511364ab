"""ReBRAC and Cal-QL pieces against closed forms: the ReBRAC actor loss and critic penalty, LayerNorm Q ensembles
(stacked == per-member MLPs), the next data action and Monte-Carlo returns-to-go in the transition batch, and
Cal-QL's calibrated CQL penalty. The recipes themselves run in tests/test_offline_rl_recipes.py (chain MDP) and
tests/test_trainer.py (bit-exact resume)."""
import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from modmimic import keys as K
from modmimic.components import batching
from modmimic.components.losses import cql, critic
from modmimic.components.losses.rebrac import rebrac_actor
from modmimic.components.nets.core import mlp
from modmimic.components.nets.value import QEnsemble
from modmimic.config import compose
from modmimic.data.build import with_required_returns
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.requirements import requirements
from modmimic.data.returns import mc_returns, with_mc_returns
from modmimic.data.sampler import WindowSampler
from modmimic.data.synthetic import write_robomimic_hdf5


from test_offline_rl_losses import TableQ  # noqa: E402  (Q_i(s, a) = w_i * a + s)


# --- ReBRAC ------------------------------------------------------------------------------------------------------

def test_rebrac_actor_closed_form():
    B = 4
    s = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    data_a = torch.tensor([[0.1, 0.2], [-0.3, 0.0], [0.5, 0.5], [0.0, -1.0]])
    w = nn.Parameter(torch.tensor([[0.5, -0.25]]))
    actor = lambda td: torch.tanh(td.get(K.obs("x")) * w)  # noqa: E731
    batch = TensorDict({K.obs("x"): s, K.ACTION: data_a}, [B])
    out = rebrac_actor(batch, actor, TableQ((1.0, -2.0)), bc_coef=0.7)
    a = torch.tanh(s * w).detach()
    q = torch.minimum(a[:, 0] + s[:, 0], -2.0 * a[:, 0] + s[:, 0])  # the ensemble's min, not Q_1
    lam = 1.0 / q.abs().mean()
    expected = (0.7 * ((a - data_a) ** 2).sum(-1) - lam * q).mean()
    assert torch.allclose(out["loss"], expected, atol=1e-6) and torch.allclose(out["lambda"], lam)
    assert torch.allclose(out["bc_loss"], ((a - data_a) ** 2).sum(-1).mean())
    # the Q scale is detached: the gradient is that of bc_coef * ||pi - a||^2 - lam_const * min Q
    out["loss"].backward()
    w2 = w.detach().clone().requires_grad_(True)
    a2 = torch.tanh(s * w2)
    q2 = torch.minimum(a2[:, 0] + s[:, 0], -2.0 * a2[:, 0] + s[:, 0])
    (0.7 * ((a2 - data_a) ** 2).sum(-1) - lam * q2).mean().backward()
    assert torch.allclose(w.grad, w2.grad, atol=1e-6)
    plain = rebrac_actor(batch, actor, TableQ((1.0, -2.0)), bc_coef=0.7, normalize_q=False)
    assert torch.allclose(plain["loss"], (0.7 * ((a - data_a) ** 2).sum(-1) - q).mean(), atol=1e-6)


def test_rebrac_critic_penalty_in_the_td3_target():
    B = 3
    nxt_s = torch.tensor([[0.0], [1.0], [2.0]])
    batch = TensorDict({K.NEXT: {K.OBS: {"x": nxt_s}, "reward": torch.tensor([[1.0], [0.0], [0.5]]),
                                 "done": torch.tensor([[False], [True], [False]]), "discount": torch.full((B, 1), 0.9),
                                 K.ACTION: torch.tensor([[0.1], [0.9], [-0.5]])}}, [B])
    actor = lambda td: torch.full((td.batch_size[0], 1), 0.4)  # noqa: E731
    out = critic.actor_target(batch, actor, TableQ((1.0, 2.0)), bc_coef=2.0, next_action_key="next.action")
    v = torch.minimum(0.4 + nxt_s, 0.8 + nxt_s) - 2.0 * (0.4 - batch[K.NEXT, K.ACTION]) ** 2
    expected = batch[K.REWARD] + 0.9 * (~batch[K.DONE]).float() * v
    assert torch.allclose(out["q_target"], expected)
    # without the key it is TD3's target
    plain = critic.actor_target(batch, actor, TableQ((1.0, 2.0)))
    assert torch.allclose(plain["q_target"], batch[K.REWARD] + 0.9 * (~batch[K.DONE]).float() * (0.4 + nxt_s))


def test_layer_norm_q_ensemble_is_its_member_mlps():
    torch.manual_seed(0)
    q = QEnsemble({"x": (3,)}, 2, layer_dims=(8, 8), n=3, layer_norm=True)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for norm in q.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    assert len(q.norms) == 2 and q.norms[0].weight.shape == (3, 1, 8)
    for rows in (7, 600):  # the batched path and the per-member path (>= STACKED_MAX_ROWS rows)
        td = TensorDict({K.obs("x"): torch.randn(rows, 3)}, [rows])
        a = torch.randn(rows, 2)
        out = q(td, a)
        for i in range(3):
            m = q.member(i)
            assert isinstance(m[1], nn.LayerNorm)
            assert torch.allclose(out[i], m(torch.cat([td[K.obs("x")], a], -1)), atol=1e-5)
    # the same seed draws the same linear weights with and without LayerNorm (LayerNorm has no random init)
    torch.manual_seed(0)
    plain = QEnsemble({"x": (3,)}, 2, layer_dims=(8, 8), n=3)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(plain.layers, q.layers)) and plain.norms is None
    torch.manual_seed(0)
    ref = mlp(5, 1, (8, 8), layer_norm=True)
    assert torch.equal(ref[0].weight.t(), q.layers[0].weight[0].detach())


def test_transition_keeps_the_next_data_action():
    B, T = 3, 2
    acts = torch.arange(B * T * 2, dtype=torch.float32).view(B, T, 2)
    w = TensorDict({K.OBS: {"x": torch.zeros(B, T, 1)}, K.ACTION: acts,
                    K.NEXT: {K.OBS: {"x": torch.ones(B, T, 1)}, "reward": torch.zeros(B, T, 1),
                             "done": torch.zeros(B, T, 1, dtype=torch.bool)}}, [B, T])
    out = batching.n_step_transition(w, next_action_key="next.action")
    assert torch.equal(out[K.NEXT, K.ACTION], acts[:, 1]) and torch.equal(out[K.ACTION], acts[:, 0])
    with pytest.raises(ValueError, match="seq_length >= 2"):
        batching.n_step_transition(w[:, :1], next_action_key="next.action")
    assert (K.NEXT, K.ACTION) not in batching.n_step_transition(w).keys(True)


# --- Cal-QL ------------------------------------------------------------------------------------------------------

def test_mc_returns_closed_form():
    r = [0, 0, 1, 0, 2, 0, 0, 5, 1]
    d = [0, 0, 1, 0, 1, 0, 0, 0, 0]  # demos 1 and 2 end with a done, demo 3 is cut without one
    lengths = [3, 2, 4]
    g = mc_returns(r, d, lengths, 0.5)
    # demo 1: G2 = 1, G1 = .5, G0 = .25; demo 2: G1 = 2 (done), G0 = 0 + .5 * 2 = 1
    # demo 3 (no done: cut at its end): G3 = 1, G2 = 5 + .5 = 5.5, G1 = 2.75, G0 = 1.375
    assert np.allclose(g, [0.25, 0.5, 1.0, 1.0, 2.0, 1.375, 2.75, 5.5, 1.0])
    # a done inside a demo stops the sum there
    assert np.allclose(mc_returns([1, 1, 1], [0, 1, 0], [3], 0.9), [1.9, 1.0, 1.0])
    # terminal_reward: a scripted success rewarded on its last 3 steps is worth 1 at its first, as online
    r, d = [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]
    assert np.allclose(mc_returns(r, d, [5], 0.5), [0.4375, 0.875, 1.75, 1.5, 1.0])
    assert np.allclose(mc_returns(r, d, [5], 0.5, terminal_reward=1.0), [0.25, 0.5, 1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def small_rl_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("calql") / "rl.hdf5")
    rng = np.random.default_rng(0)
    demos = []
    for L in (4, 6):
        demos.append({"obs": {"x": rng.normal(size=(L, 1))}, "next_obs": {"x": rng.normal(size=(L, 1))},
                      "actions": rng.uniform(-1, 1, (L, 1)), "rewards": rng.uniform(0, 1, L),
                      "dones": np.eye(L, dtype=np.int64)[-1]})
    write_robomimic_hdf5(path, demos)
    return path, demos


def test_mc_returns_reach_the_transition_batch(small_rl_file):
    path, demos = small_rl_file
    store = with_mc_returns(load_episode_store(path, ["x"]), 0.9)
    sampler = WindowSampler(store, 10, seq_length=1)
    batch = batching.n_step_transition(sampler.gather(torch.arange(len(sampler))), discount=0.9,
                                       mc_return_key="mc_return")
    expected = np.concatenate([mc_returns(d["rewards"], d["dones"], [len(d["rewards"])], 0.9) for d in demos])
    assert torch.allclose(batch["mc_return"][:, 0], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    # with batch.terminal_reward the loader ends the returns where the transitions end (every step rewarded >= 0.5)
    cfg = compose("cal_ql", [f"train.data={path}", "+batch.terminal_reward=0.5"])
    ended = with_required_returns(cfg, load_episode_store(path, ["x"]))
    rows = ended.flat[:, ended.columns[K.MC_RETURN][0]].numpy()
    expected = np.concatenate([mc_returns(d["rewards"], d["dones"], [len(d["rewards"])], cfg.algo.discount, 0.5)
                               for d in demos])
    assert np.allclose(rows, expected) and not np.allclose(expected, np.concatenate(
        [mc_returns(d["rewards"], d["dones"], [len(d["rewards"])], cfg.algo.discount) for d in demos]))
    # the original store is untouched; without returns the batch function names the problem
    plain = WindowSampler(load_episode_store(path, ["x"]), 4).sample()
    with pytest.raises(ValueError, match="Monte-Carlo returns"):
        batching.n_step_transition(plain, mc_return_key="mc_return")


def test_cal_ql_recipe_requires_mc_returns():
    cfg = compose("cal_ql")
    assert cfg.algo_name == "cal_ql" and "mc_returns" in requirements(cfg)
    assert cfg.losses.cql.lower_bound_key == "mc_return" and cfg.losses.cql.fn.endswith("cql_penalty")
    assert "mc_returns" not in requirements(compose("cql"))


class FakePolicy(nn.Module):
    """pi(s): 1-D samples ``s * 0.1 + 0.01 k`` with log density ``-k`` (k = 0 .. n - 1)."""

    def forward(self, td):
        s = td.get(K.obs("x"))

        class D:
            def rsample_with_log_prob(self, shape=()):
                n = shape[0]
                k = torch.arange(n, dtype=torch.float32).view(n, 1, 1)
                return (s[..., :1] * 0.1).unsqueeze(0) + 0.01 * k, -k[..., 0].expand(n, s.shape[0])

        return D()


def test_calibrated_cql_penalty_closed_form():
    """The policy candidates' Q values are raised to the Monte-Carlo return before the log-sum-exp; the uniform
    candidates are not."""
    N, B = 3, 4
    s = torch.arange(B, dtype=torch.float32)[:, None]
    bound = torch.tensor([[0.0], [5.0], [-3.0], [2.0]])
    batch = TensorDict({K.obs("x"): s, K.ACTION: torch.full((B, 1), 0.3), "mc_return": bound,
                        K.NEXT: {K.OBS: {"x": 10 + s}}}, [B])
    q = TableQ((1.0, 2.0))
    torch.manual_seed(0)
    out = cql.cql_penalty(batch, q, FakePolicy(), lambda: torch.tensor(0.0), num_random_actions=N,
                          target_q_gap=None, cql_weight=1.0, lower_bound_key="mc_return")
    torch.manual_seed(0)
    rand = torch.empty(B, N, 1).uniform_(-1, 1)
    k = torch.arange(N, dtype=torch.float32)
    pol = torch.cat([(s * 0.1)[:, None] + 0.01 * k[None, :, None], ((s + 10) * 0.1)[:, None] + 0.01 * k[None, :, None]],
                    1)  # [B, 2N, 1]: pi(s) and pi(s') samples, all scored at s
    logd = torch.cat([torch.full((B, N), math.log(0.5)), -k.expand(B, N), -k.expand(B, N)], 1)
    gaps, below = [], []
    for w in (1.0, 2.0):
        q_rand = w * rand[..., 0] + s
        q_pol = w * pol[..., 0] + s
        below.append((q_pol < bound).float())
        qc = torch.cat([q_rand, torch.maximum(q_pol, bound)], 1)
        gaps.append(torch.logsumexp(qc - logd, 1).mean() - (w * 0.3 + s[:, 0]).mean())
    assert torch.allclose(out["loss"], torch.stack(gaps).sum(), atol=1e-5)
    assert torch.allclose(out["bounded_fraction"], torch.stack(below).mean())
    assert 0 < out["bounded_fraction"] < 1  # some candidates were raised, some not
    # a bound below every Q value changes nothing: CQL's penalty
    batch["mc_return"] = torch.full((B, 1), -100.0)
    torch.manual_seed(0)
    low = cql.cql_penalty(batch, q, FakePolicy(), lambda: torch.tensor(0.0), num_random_actions=N,
                          target_q_gap=None, lower_bound_key="mc_return")
    torch.manual_seed(0)
    plain = cql.cql_penalty(batch, q, FakePolicy(), lambda: torch.tensor(0.0), num_random_actions=N, target_q_gap=None)
    assert torch.equal(low["loss"], plain["loss"])
    # the bound's gradient goes only through the raised values (max picks the critic where Q >= bound)
    cand = torch.tensor([[[1.0, 2.0, -1.0, 4.0]]], requires_grad=True)
    cal = cql.calibrate(cand, torch.tensor([[0.0]]), 1)
    assert torch.equal(cal, torch.tensor([[[1.0, 2.0, 0.0, 4.0]]]))
    cal.sum().backward()
    assert torch.equal(cand.grad, torch.tensor([[[1.0, 1.0, 0.0, 1.0]]]))
