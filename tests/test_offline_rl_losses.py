"""Offline-RL components against closed forms on hand-made batches: n-step transitions, TD targets, ensembles,
C51 projection, CQL penalty (paper form), expectile and AWR weights, TD3 smoothing, BCQ selection, value nets."""
import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from modmimic import keys as K
from modmimic.components.acting import SampleSelect
from modmimic.components.batching import DISCOUNT, n_step_transition
from modmimic.components.losses import bcq, cql, critic, iql
from modmimic.components.nets.value import DistributionalQ, PerturbationActor, QEnsemble, ValueNet


def windows(rewards, dones, mask=None, obs_dim=2):
    """A [B, T] window batch whose observation at step t of row b is (b, t) and next observation (b, t + 0.5)."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    B, T = r.shape
    d = torch.as_tensor(dones, dtype=torch.bool)
    t = torch.arange(T, dtype=torch.float32).expand(B, T)
    b = torch.arange(B, dtype=torch.float32)[:, None].expand(B, T)
    obs = torch.stack([b, t], -1)
    nobs = torch.stack([b, t + 0.5], -1)
    m = torch.ones(B, T, dtype=torch.bool) if mask is None else torch.as_tensor(mask)
    return TensorDict({K.OBS: {"x": obs}, K.ACTION: t[..., None] * 0.1,
                       K.NEXT: {K.OBS: {"x": nobs}, "reward": r[..., None], "done": d[..., None],
                                "terminated": d[..., None]},
                       K.MASK[0]: {K.MASK[1]: m}}, batch_size=[B, T])


def test_one_step_transition_is_robomimics_first_step():
    w = windows([[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]], [[0, 0, 1], [1, 0, 0]])
    out = n_step_transition(w, n_step=1, discount=0.9)
    assert out.batch_size == torch.Size([2])
    assert torch.equal(out[K.NEXT, "reward"], torch.tensor([[1.0], [0.5]]))
    assert torch.equal(out[K.NEXT, "done"], torch.tensor([[False], [True]]))
    assert torch.allclose(out[DISCOUNT], torch.full((2, 1), 0.9))
    assert torch.equal(out[K.obs("x")], w[K.obs("x")][:, 0])
    assert torch.equal(out[K.next_obs("x")], w[K.next_obs("x")][:, 0])
    assert torch.equal(out[K.ACTION], w[K.ACTION][:, 0])


def test_n_step_transition_closed_form():
    g = 0.9
    # row 0: no done -> sum of 3 discounted rewards, gamma^3, next obs of step 2
    # row 1: done at step 1 -> rewards up to it only, done
    # row 2: the window runs past the demo's end (last step repeated by padding) -> real steps only, gamma^2
    w = windows([[1.0, 2.0, 4.0, 8.0], [1.0, 2.0, 4.0, 8.0], [1.0, 2.0, 2.0, 2.0]],
                [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
                mask=[[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    out = n_step_transition(w, n_step=3, discount=g)
    expected = torch.tensor([[1 + g * 2 + g * g * 4], [1 + g * 2], [1 + g * 2]])
    assert torch.allclose(out[K.NEXT, "reward"], expected)
    assert torch.equal(out[K.NEXT, "done"][:, 0], torch.tensor([False, True, False]))
    assert torch.allclose(out[DISCOUNT][:, 0], torch.tensor([g ** 3, g ** 2, g ** 2]))
    assert torch.equal(out[K.next_obs("x")], w[K.next_obs("x")][:, 2])  # next_obs[:, n_step - 1]
    # infinite horizon: done transitions' rewards scaled by 1 / (1 - gamma^n)
    inf = n_step_transition(w, n_step=3, discount=g, infinite_horizon=True)
    assert torch.allclose(inf[K.NEXT, "reward"][1], expected[1] / (1 - g ** 3))
    assert torch.allclose(inf[K.NEXT, "reward"][0], expected[0])
    with pytest.raises(ValueError, match="seq_length >= algo.n_step"):
        n_step_transition(w, n_step=5)
    # every step's reward transformed before the sum: sum_i g^i (2 r_i - 1) over the live steps
    shifted = n_step_transition(w, n_step=3, discount=g, reward_scale=2.0, reward_shift=-1.0)
    assert torch.allclose(shifted[K.NEXT, "reward"], 2 * expected - torch.tensor([[1 + g + g * g], [1 + g], [1 + g]]))
    assert torch.equal(shifted[DISCOUNT], out[DISCOUNT]) and torch.equal(shifted[K.NEXT, "done"], out[K.NEXT, "done"])
    one = n_step_transition(w, n_step=1, discount=g, reward_shift=-1.0)
    assert torch.equal(one[K.NEXT, "reward"], w[K.NEXT, "reward"][:, 0] - 1.0)
    with pytest.raises(ValueError, match="returns-to-go are of the untransformed rewards"):
        n_step_transition(w, n_step=1, reward_shift=-1.0, mc_return_key="mc_return")
    # terminal_reward: a step rewarded >= 4 ends its episode (row 0's third step, row 1 already ended at its second)
    term = n_step_transition(w, n_step=3, discount=g, terminal_reward=4.0)
    assert torch.equal(term[K.NEXT, "done"][:, 0], torch.tensor([True, True, False]))
    assert torch.allclose(term[K.NEXT, "reward"], expected) and torch.equal(term[DISCOUNT], out[DISCOUNT])
    term1 = n_step_transition(w, n_step=1, discount=g, terminal_reward=1.0)  # every first step is rewarded 1
    assert term1[K.NEXT, "done"].all() and not n_step_transition(w, n_step=1, discount=g)[K.NEXT, "done"].any()


def test_a_reward_transform_with_monte_carlo_returns_is_a_config_error():
    from modmimic.config import ConfigError, compose

    assert compose("cql", ["batch.reward_shift=-1.0"]).batch.reward_shift == -1.0
    with pytest.raises(ConfigError, match="Monte-Carlo returns-to-go are computed from the untransformed rewards"):
        compose("cal_ql", ["batch.reward_shift=-1.0"])


def test_goal_is_part_of_the_next_state():
    w = windows([[0.0]], [[0]])
    w[K.GOAL] = TensorDict({"g": torch.ones(1, 1, 3)}, [1, 1])
    out = n_step_transition(w)
    assert torch.equal(out[K.NEXT, K.GOAL, "g"], torch.ones(1, 3))


def test_bootstrap_and_ensemble_mix():
    batch = TensorDict({K.NEXT: {"reward": torch.tensor([[1.0], [2.0]]), "done": torch.tensor([[False], [True]]),
                                 "discount": torch.tensor([[0.5], [0.5]])}}, [2])
    assert torch.equal(critic.bootstrap(batch, torch.tensor([[10.0], [10.0]])), torch.tensor([[6.0], [2.0]]))
    del batch[DISCOUNT]
    assert torch.equal(critic.bootstrap(batch, torch.tensor([[10.0], [10.0]]), discount=0.1), torch.tensor([[2.0], [2.0]]))
    with pytest.raises(ValueError, match="discount"):
        critic.bootstrap(batch, torch.zeros(2, 1))
    qs = torch.tensor([[1.0, 5.0], [3.0, 2.0]])  # [N=2, B=2]
    assert torch.allclose(critic.mix_ensemble(qs, 0.75), torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 5]))
    assert torch.equal(critic.mix_ensemble(qs, 1.0), torch.tensor([1.0, 2.0]))


class TableQ(nn.Module):
    """A fake ensemble: Q_i(s, a) = w_i * a[..., 0] + s[..., 0] (members differ by slope)."""

    def __init__(self, slopes=(1.0, 2.0)):
        super().__init__()
        self.slopes = torch.tensor(slopes)

    def forward(self, td, a):
        s = td.get(K.obs("x"))[..., :1]
        if a.dim() > s.dim():
            s = s.unsqueeze(-2)
        return torch.stack([w * a[..., :1] + s for w in self.slopes])

    def q1(self, td, a):
        return self.forward(td, a)[0]


def test_next_q_value_max_over_samples_and_order():
    td = TensorDict({K.obs("x"): torch.zeros(1, 1)}, [1])
    a = torch.tensor([[[-1.0], [0.5]]])  # two candidates
    q = TableQ((1.0, -1.0))  # member values: [-1, .5] and [1, -.5]
    # BCQ: mix (min) per candidate then max: max(min(-1, 1), min(.5, -.5)) = -.5
    assert torch.allclose(critic.next_q_value(q, td, a, 1.0), torch.tensor([[-0.5]]))
    # CQL: max per member, then min: min(.5, 1) = .5
    assert torch.allclose(critic.next_q_value(q, td, a, 1.0, max_over_samples_first=True), torch.tensor([[0.5]]))


def test_td_loss_sum_of_member_mse_and_huber():
    batch = TensorDict({K.obs("x"): torch.tensor([[0.0], [1.0]]), K.ACTION: torch.tensor([[1.0], [3.0]]),
                        "q_target": torch.tensor([[0.0], [0.0]])}, [2])
    q = TableQ((1.0, 2.0))  # Q1 = a + s = [1, 4]; Q2 = 2a + s = [2, 7]
    out = critic.td_loss(batch, q)
    assert torch.allclose(out["critic1_loss"], torch.tensor((1 + 16) / 2))
    assert torch.allclose(out["loss"], torch.tensor((1 + 16) / 2 + (4 + 49) / 2))
    hub = critic.td_loss(batch, q, use_huber=True)
    assert torch.allclose(hub["critic1_loss"], torch.tensor((0.5 + 3.5) / 2))


def test_td3_target_policy_smoothing_is_clipped():
    td = TensorDict({K.NEXT: {K.OBS: {"x": torch.zeros(4000, 1)}, "reward": torch.zeros(4000, 1),
                              "done": torch.zeros(4000, 1, dtype=torch.bool), "discount": torch.ones(4000, 1)}},
                    [4000])
    actor = lambda s: torch.full((s.batch_size[0], 1), 0.8)  # noqa: E731
    q = TableQ((1.0, 1.0))
    torch.manual_seed(0)
    y = critic.actor_target(td, actor, q, noise_std=0.2, noise_clip=0.5)["q_target"]  # = clip(0.8 + eps, -1, 1)
    torch.manual_seed(0)
    eps = (torch.randn(4000, 1) * 0.2).clamp(-0.5, 0.5)
    assert torch.allclose(y, (0.8 + eps).clamp(-1, 1))
    assert y.max() <= 1.0 and y.min() >= 0.3


def test_c51_projection_closed_forms():
    atoms = torch.linspace(0.0, 1.0, 5)  # spacing 0.25
    # a value on an atom keeps its mass there; midway splits it; outside the support it is clipped to the ends
    vals = torch.tensor([[0.5, 0.125, 2.0, -1.0]])
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    out = critic.project_values_onto_atoms(vals, probs, atoms)
    expected = torch.tensor([[0.15 + 0.1, 0.15, 0.4, 0.0, 0.2]])
    assert torch.allclose(out, expected)
    # identity when the values are the atoms; a shifted grid moves the mass by interpolation
    p = torch.softmax(torch.randn(3, 5), -1)
    assert torch.allclose(critic.project_values_onto_atoms(atoms.expand(3, 5), p, atoms), p, atol=1e-6)
    shifted = critic.project_values_onto_atoms((atoms + 0.05).expand(3, 5), p, atoms)
    assert torch.allclose(shifted.sum(-1), torch.ones(3))
    assert torch.allclose((shifted * atoms).sum(-1), (p * (atoms + 0.05).clamp(0, 1)).sum(-1), atol=1e-6)


def test_c51_target_bellman_shift_of_the_best_candidate():
    torch.manual_seed(0)
    dq = DistributionalQ({"x": (1,)}, 1, layer_dims=(8,), value_bounds=(0.0, 1.0), num_atoms=5)
    td = TensorDict({K.obs("x"): torch.zeros(2, 1), K.ACTION: torch.zeros(2, 1),
                     K.NEXT: {K.OBS: {"x": torch.zeros(2, 1)}, "reward": torch.tensor([[0.0], [1.0]]),
                              "done": torch.tensor([[False], [True]]), "discount": torch.full((2, 1), 0.5)}}, [2])

    class Fixed(nn.Module):
        training = False

        def act(self, td, n):
            return torch.linspace(-1, 1, n).view(1, n, 1).expand(td.batch_size[0], n, 1)

        vae = True

    probs = bcq.c51_target(td, Fixed(), dq, num_samples=3)["q_target_probs"]
    with torch.no_grad():
        cand = Fixed().act(td, 3)
        p = torch.softmax(dq.logits(td, cand), -1)
        best = p[torch.arange(2), (p * dq.atoms).sum(-1).argmax(-1)]
    # row 0: r=0, gamma=.5: atoms halved -> [0, .125, .25, .375, .5]; row 1: done, r=1 -> everything at 1
    exp0 = critic.project_values_onto_atoms(dq.atoms * 0.5, best[0], dq.atoms)
    assert torch.allclose(probs[0], exp0, atol=1e-6)
    assert torch.allclose(probs[1], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]), atol=1e-6)
    loss = critic.c51_loss(TensorDict({**td.to_dict(), "q_target_probs": probs}, [2]), dq)["loss"]
    logp = torch.log_softmax(dq.logits(td, td[K.ACTION]), -1)
    ref = (probs * (torch.log(probs.clamp_min(1e-30)) - logp)).sum(-1).mean()
    assert torch.allclose(loss, ref, atol=1e-6)


def test_cql_gap_paper_form_closed_form():
    rng = np.random.default_rng(0)
    q_cand = rng.normal(size=(2, 3, 6))  # [critics, B, 3N]
    logd = rng.normal(size=(3, 6))
    q_data = rng.normal(size=(2, 3, 1))
    gap = cql.cql_gap(torch.tensor(q_cand), torch.tensor(logd), torch.tensor(q_data), min_q_weight=2.0).numpy()
    for i in range(2):
        lse = [math.log(sum(math.exp(q_cand[i, b, j] - logd[b, j]) for j in range(6))) for b in range(3)]
        assert gap[i] == pytest.approx(2.0 * (np.mean(lse) - q_data[i].mean()), rel=1e-9)


class FakePolicy(nn.Module):
    """pi(s) = a fixed 1-D action distribution: samples s[..., :1] * 0.1 + k * 0.01, log density -k."""

    def forward(self, td):
        s = td.get(K.obs("x"))
        policy = self

        class D:
            def rsample_with_log_prob(self, shape=()):
                n = shape[0]
                k = torch.arange(n, dtype=torch.float32).view(n, 1, 1)
                a = (s[..., :1] * 0.1).unsqueeze(0) + 0.01 * k
                return a, -k[..., 0].expand(n, s.shape[0])

        return D()


def test_cql_penalty_scores_every_candidate_at_s_with_lagrange_and_fixed_weights():
    N, B = 3, 4
    batch = TensorDict({K.obs("x"): torch.arange(B, dtype=torch.float32)[:, None], K.ACTION: torch.full((B, 1), 0.3),
                        K.NEXT: {K.OBS: {"x": 10 + torch.arange(B, dtype=torch.float32)[:, None]}}}, [B])
    q = TableQ((1.0, 2.0))
    logw = nn.Parameter(torch.tensor(0.2))
    torch.manual_seed(0)
    out = cql.cql_penalty(batch, q, FakePolicy(), lambda: logw, num_random_actions=N, min_q_weight=1.5,
                          target_q_gap=5.0)
    # reference, written out: uniform (drawn first), pi(s), pi(s') candidates, all scored at s
    torch.manual_seed(0)
    rand = torch.empty(B, N, 1).uniform_(-1, 1)
    k = torch.arange(N, dtype=torch.float32)
    s, s2 = batch[K.obs("x")], batch[K.next_obs("x")]
    cand = torch.cat([rand, (s * 0.1)[:, None] + 0.01 * k[None, :, None], (s2 * 0.1)[:, None] + 0.01 * k[None, :, None]], 1)
    logd = torch.cat([torch.full((B, N), math.log(0.5)), -k.expand(B, N), -k.expand(B, N)], 1)
    gaps = []
    for w in (1.0, 2.0):
        qc = w * cand[..., 0] + s  # Q(s, a) for every candidate, at s
        gaps.append(1.5 * (torch.logsumexp(qc - logd, 1).mean() - (w * 0.3 + s[:, 0]).mean()))
    gaps = torch.stack(gaps)
    wgt = math.exp(0.2)
    assert torch.allclose(out["gap"], gaps.mean(), atol=1e-5)
    assert torch.allclose(out["penalty"], (wgt * (gaps - 5.0)).sum(), atol=1e-5)
    # Lagrange: the weight's gradient is that of -mean_i w (gap_i - target)
    out["loss"].backward()
    assert torch.allclose(logw.grad, -(wgt * (gaps - 5.0)).mean(), atol=1e-5)
    # fixed weight: w * gap, no target, no weight gradient
    torch.manual_seed(0)
    fixed = cql.cql_penalty(batch, q, FakePolicy(), lambda: logw, num_random_actions=N, min_q_weight=1.5,
                            target_q_gap=None, cql_weight=3.0)
    assert torch.allclose(fixed["loss"], 3.0 * gaps.sum(), atol=1e-5)
    # without importance sampling (CQL(H) over the candidates' values alone): log p(a_j) = 0 for every candidate
    torch.manual_seed(0)
    plain = cql.cql_penalty(batch, q, FakePolicy(), lambda: logw, num_random_actions=N, min_q_weight=1.5,
                            target_q_gap=None, cql_weight=3.0, importance_sampling=False)
    plain_gaps = torch.stack([1.5 * (torch.logsumexp(w * cand[..., 0] + s, 1).mean() - (w * 0.3 + s[:, 0]).mean())
                              for w in (1.0, 2.0)])
    assert torch.allclose(plain["loss"], 3.0 * plain_gaps.sum(), atol=1e-5)
    assert torch.allclose(plain["gap"], plain_gaps.mean(), atol=1e-5)


def test_sac_actor_and_entropy_temperature():
    from modmimic.components.nets.policy import policy

    torch.manual_seed(0)
    pol = policy({"x": (1,)}, 2, head="gaussian", layer_dims=[8], head_kwargs={"use_tanh": True,
                                                                             "std_activation": "exp"})
    q = QEnsemble({"x": (1,)}, 2, layer_dims=(8,))
    batch = TensorDict({K.obs("x"): torch.randn(6, 1), K.ACTION: torch.rand(6, 2) * 1.8 - 0.9}, [6])
    log_alpha = nn.Parameter(torch.tensor(0.3))
    torch.manual_seed(1)
    out = cql.sac_actor(batch, pol, q, lambda: log_alpha)
    torch.manual_seed(1)
    a, lp = pol(batch).rsample_with_log_prob()
    ref = (math.exp(0.3) * lp - q(batch, a).min(0).values[..., 0]).mean()
    assert torch.allclose(out["loss"], ref, atol=1e-6)
    out["loss"].backward()
    assert log_alpha.grad is None  # alpha is detached in the actor loss (robomimic steps it separately)
    assert "actor_log_prob" not in batch.keys()  # losses never write into the batch: the engine does
    assert cql.sac_actor.writes == ("{keep_log_prob}",) and not out["actor_log_prob"].requires_grad
    batch["actor_log_prob"] = out["actor_log_prob"]
    ent = cql.entropy_temperature(batch, lambda: log_alpha, "default")
    assert torch.allclose(ent["loss"], -(log_alpha * (batch["actor_log_prob"] - 2.0)).mean())
    assert not cql.entropy_temperature(batch, lambda: log_alpha, None)["loss"].requires_grad
    # BC warm start: log pi(a_data|s) replaces the Q term
    bc = cql.sac_actor(batch, pol, q, lambda: log_alpha, bc_start_steps=5, step=2)
    assert bc["loss"].requires_grad


def test_expectile_weights_and_value_loss():
    err = torch.tensor([-1.0, 0.0, 2.0])
    assert torch.allclose(iql.expectile_weights(err, 0.9), torch.tensor([0.9, 0.9, 0.1]))
    v = ValueNet({"x": (1,)}, layer_dims=(4,))
    batch = TensorDict({K.obs("x"): torch.randn(5, 1), "q_data_min": torch.randn(5, 1)}, [5])
    out = iql.expectile_value(batch, v, quantile=0.7)
    e = v(batch) - batch["q_data_min"]
    assert torch.allclose(out["loss"], (torch.where(e > 0, 0.3, 0.7) * e ** 2).mean())
    assert "value_pred" not in out and "value_pred" not in batch.keys()
    kept = iql.expectile_value(batch, v, quantile=0.7, keep_value="value_pred")["value_pred"]  # V(s) for the actor
    assert torch.equal(kept, v(batch)) and not kept.requires_grad
    assert torch.equal(iql.value_prediction(batch, v)["value_pred"], v(batch))


def test_awr_weights_with_clipping():
    adv = torch.tensor([-2.0, 0.0, 1.0, 10.0])
    assert torch.allclose(iql.awr_weights(adv, beta=0.5), torch.exp(adv / 0.5).clamp(max=100.0))
    assert iql.awr_weights(adv, beta=0.5)[-1] == 100.0
    assert torch.allclose(iql.awr_weights(adv, beta=1.0, clip_adv_value=0.5, use_final_clip=False),
                          torch.exp(adv.clamp(max=0.5)))
    assert iql.awr_weights(adv, beta=0.1, use_final_clip=False)[-1] > 100
    with pytest.raises(ValueError, match="filter_type"):
        iql.awr_weights(adv, filter_type="softmax")


def test_awr_actor_is_weighted_nll():
    class Dist:
        def log_prob(self, a):
            return -a[..., 0]

    batch = TensorDict({K.ACTION: torch.tensor([[1.0], [2.0]]), "q_data_min": torch.tensor([[1.0], [0.0]]),
                        "value_pred": torch.tensor([[0.0], [0.0]])}, [2])
    out = iql.awr_actor(batch, lambda td: Dist(), beta=1.0)
    assert torch.allclose(out["loss"], torch.tensor((math.e * 1 + 1 * 2) / 2))


def test_bcq_selects_the_argmax_of_the_first_critic():
    class Sampler(nn.Module):
        vae = True  # duck-typed: act(td, n)

        def act(self, td, n):
            return torch.tensor([-0.9, 0.2, 0.7, -0.1])[:n].view(1, n, 1).expand(td.batch_size[0], n, 1)

    class Bump(nn.Module):
        """Q_1 peaks at a = 0.2 for row 0 and at a = -0.9 for row 1."""

        def q1(self, td, a):
            target = torch.tensor([0.2, -0.9]).view(2, 1, 1)
            return -(a - target).abs()

    nets = nn.ModuleDict({"action_sampler": Sampler(), "critic": Bump()})
    td = TensorDict({K.obs("x"): torch.zeros(2, 1)}, [2])
    act = SampleSelect(nets, num_samples=4)(td)
    assert torch.allclose(act, torch.tensor([[0.2], [-0.9]]))
    # with a perturbation actor: candidates are perturbed first, then scored
    nets["actor"] = PerturbationActor({"x": (1,)}, 1, layer_dims=(4,), perturbation_scale=0.05)
    cand = bcq.candidates(nets["action_sampler"], td, 4, nets["actor"])
    assert (cand - Sampler().act(td, 4)).abs().max() <= 0.05 + 1e-6
    best, value = bcq.best_of(nets["action_sampler"], nets["critic"], td, 4, nets["actor"])
    q = nets["critic"].q1(td, cand)[..., 0]
    assert torch.allclose(value[:, 0], q.max(-1).values)
    assert torch.allclose(best, cand[torch.arange(2), q.argmax(-1)])


def test_value_bounds_and_ensemble_shapes():
    torch.manual_seed(0)
    q = QEnsemble({"x": (3,)}, 2, layer_dims=(8,), n=3, value_bounds=(-1.0, 3.0))
    td = TensorDict({K.obs("x"): 100 * torch.randn(5, 3)}, [5])
    out = q(td, torch.randn(5, 7, 2))
    assert out.shape == (3, 5, 7, 1) and out.min() >= -1.0 and out.max() <= 3.0
    # candidates broadcast over the state features == tiling the states
    a = torch.randn(5, 7, 2)
    tiled = TensorDict({K.obs("x"): td[K.obs("x")].repeat_interleave(7, 0)}, [35])
    assert torch.allclose(q(td, a).reshape(3, 35, 1), q(tiled, a.reshape(35, 2)), atol=1e-6)
    assert torch.allclose(q.q1(td, a), q(td, a)[0])
    v = ValueNet({"x": (3,)}, layer_dims=(8,), value_bounds=(0.0, 1.0))
    assert v(td).shape == (5, 1) and (v(td) >= 0).all() and (v(td) <= 1).all()
    with pytest.raises(ValueError, match="value_bounds"):
        DistributionalQ({"x": (3,)}, 2, value_bounds=None)
