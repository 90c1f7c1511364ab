"""Offline-RL recipes against torchrl's losses on identical parameters and batches, over several optimizer steps.

* IQL recipe (three updates through ``Algo.train_on_batch``) vs ``torchrl.objectives.IQLLoss`` + one Adam +
  ``SoftUpdate``: the recipe's ``prepare`` stage and the per-network Adam optimizers give the same trajectory.
* TD3-BC recipe (critic every step, actor and targets every 2nd step, seeded smoothing noise) vs ``TD3BCLoss``.
* The BC term of TD3-BC vs ``BCLoss``.

The torchrl side gets deep copies of modmimic's networks (built first), wrapped as TensorDictModules over the single
observation key; ensembles are passed as a list so torchrl stacks the same weights (reference/torchrl-notes.md §1.4).
"""
import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential, TensorDictModule
from torch import nn

from modmimic import keys as K
from modmimic.algo import algo_factory
from modmimic.config import compose

OBS_DIM, ACT_DIM, B = 5, 2, 32
OBS_KEY = K.obs("s")


def transition_batch(seed, B=B):
    g = torch.Generator().manual_seed(seed)
    done = torch.rand(B, 1, generator=g) < 0.2
    return TensorDict({
        K.OBS: {"s": torch.randn(B, OBS_DIM, generator=g)},
        K.ACTION: torch.rand(B, ACT_DIM, generator=g) * 1.8 - 0.9,
        K.NEXT: {K.OBS: {"s": torch.randn(B, OBS_DIM, generator=g)},
                 "reward": torch.randn(B, 1, generator=g), "done": done, "terminated": done.clone()},
    }, batch_size=[B])


def build(recipe, overrides):
    cfg = compose(recipe, ["observation.modalities.obs.low_dim=[s]", *overrides])
    torch.manual_seed(0)
    return algo_factory(cfg.algo_name, cfg, {"s": (OBS_DIM,)}, ACT_DIM)


class StateAction(nn.Module):
    """Tensor-level view of a modmimic module over (obs, action) for torchrl."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, obs, act):
        return self.mlp(torch.cat([obs, act], -1))


class PolicyOnTensor(nn.Module):
    """A modmimic policy (MLP backbone + head) applied to the observation tensor."""

    def __init__(self, policy, raw=False):
        super().__init__()
        self.backbone, self.head = policy.backbone, policy.head
        self.raw = raw

    def forward(self, obs):
        h = self.backbone(obs)
        return self.head.linear(h) if self.raw else self.head(h)


class _HeadDist:
    """torchrl distribution_class: the modmimic head's distribution from its raw linear output."""

    def __new__(cls, loc, head):
        return head(loc)


def torchrl_actor_from_gaussian_policy(policy):
    """ProbabilisticTensorDictSequential whose parameters are a copy of ``policy``'s and whose distribution is the
    modmimic Gaussian head's (the copied linear layer runs in the first module, the head's math in the second)."""
    pol = copy.deepcopy(policy)
    head_math = copy.deepcopy(pol.head)
    head_math.linear = nn.Identity()
    feats = TensorDictModule(PolicyOnTensor(pol, raw=True), in_keys=[OBS_KEY], out_keys=["loc"])
    prob = ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=[K.ACTION], distribution_class=_HeadDist,
                                         distribution_kwargs={"head": head_math})
    return ProbabilisticTensorDictSequential(feats, prob)


def members(ensemble):
    """Copies of the stacked ensemble's members as plain MLPs (``nn.Sequential``, as torchrl gets them)."""
    return [ensemble.member(i) for i in range(ensemble.n)]


def assert_close_params(a: nn.Module, b: nn.Module, atol=1e-6):
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=atol), (n, (p - q).abs().max())


def test_iql_recipe_matches_torchrl_iqlloss_over_adam_steps():
    from torchrl.objectives import IQLLoss, SoftUpdate, ValueEstimators

    beta, quantile, tau, gamma = 0.5, 0.8, 0.01, 0.9
    algo = build("iql", ["algo.actor.layer_dims=[32,32]", "algo.critic.layer_dims=[32,32]",
                         f"algo.adv.beta={beta}", f"algo.vf_quantile={quantile}", f"algo.target_tau={tau}",
                         f"algo.discount={gamma}", "algo.optim_params.critic.learning_rate.initial=1e-3",
                         "algo.optim_params.vf.learning_rate.initial=1e-3",
                         "algo.optim_params.actor.learning_rate.initial=1e-3"])
    nets = algo.nets
    actor = torchrl_actor_from_gaussian_policy(nets["actor"])
    qs = [TensorDictModule(StateAction(copy.deepcopy(m)), in_keys=[OBS_KEY, K.ACTION],
                           out_keys=["state_action_value"]) for m in members(nets["critic"])]
    value = TensorDictModule(copy.deepcopy(nets["vf"].net), in_keys=[OBS_KEY], out_keys=["state_value"])
    loss = IQLLoss(actor, qs, value, num_qvalue_nets=2, loss_function="l2", temperature=1.0 / beta,
                   expectile=quantile)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=gamma)
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    updater = SoftUpdate(loss, tau=tau)

    algo.set_train()
    for step in range(8):
        batch = transition_batch(step)
        ours = algo.train_on_batch(algo.process_batch_for_training(batch), epoch=1)
        out = loss(batch.clone())
        for mine, theirs in (("critic/loss", "loss_qvalue"), ("vf/loss", "loss_value"), ("actor/loss", "loss_actor")):
            assert torch.allclose(ours[mine], out[theirs], atol=1e-6), (step, mine, ours[mine], out[theirs])
        opt.zero_grad()
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
        opt.step()
        updater.step()
    # the trajectories stayed together: same weights after the steps
    assert_close_params(nets["vf"].net, value.module)
    assert_close_params(nets["actor"].backbone, actor[0].module.backbone)
    for i, m in enumerate(members(nets["critic"])):
        theirs = loss.qvalue_network_params.data[i]
        for (name, p) in m.named_parameters():
            key = tuple(["module", "mlp"] + name.split("."))
            assert torch.allclose(p, theirs.get(key), atol=1e-6), name
    for i, m in enumerate(members(nets["critic_target"])):
        theirs = loss.target_qvalue_network_params.data[i]
        for (name, p) in m.named_parameters():
            assert torch.allclose(p, theirs.get(tuple(["module", "mlp"] + name.split("."))), atol=1e-6), name


def test_td3_bc_recipe_matches_torchrl_td3bcloss_with_seeded_noise():
    from torchrl.objectives import SoftUpdate, TD3BCLoss, ValueEstimators

    tau, gamma, alpha = 0.05, 0.9, 2.5
    algo = build("td3_bc", ["algo.actor.layer_dims=[32,32]", "algo.critic.layer_dims=[32,32]",
                            f"algo.target_tau={tau}", f"algo.discount={gamma}", f"algo.alpha={alpha}",
                            "algo.optim_params.critic.learning_rate.initial=1e-3",
                            "algo.optim_params.actor.learning_rate.initial=1e-3"])
    nets = algo.nets
    actor = TensorDictModule(PolicyOnTensor(copy.deepcopy(nets["actor"])), in_keys=[OBS_KEY], out_keys=[K.ACTION])
    qs = [TensorDictModule(StateAction(copy.deepcopy(m)), in_keys=[OBS_KEY, K.ACTION],
                           out_keys=["state_action_value"]) for m in members(nets["critic"])]
    loss = TD3BCLoss(actor, qs, bounds=(-1.0, 1.0), num_qvalue_nets=2, policy_noise=0.2, noise_clip=0.5,
                     alpha=alpha, loss_function="l2")
    loss.make_value_estimator(ValueEstimators.TD0, gamma=gamma)
    critic_params = list(loss.qvalue_network_params.values(True, True))
    actor_params = list(loss.actor_network_params.values(True, True))
    opt_q = torch.optim.Adam(critic_params, lr=1e-3)
    opt_a = torch.optim.Adam(actor_params, lr=1e-3)
    updater = SoftUpdate(loss, tau=tau)

    algo.set_train()
    for step in range(6):
        batch = transition_batch(100 + step)
        torch.manual_seed(step)
        ours = algo.train_on_batch(algo.process_batch_for_training(batch), epoch=1)
        torch.manual_seed(step)
        q_loss, _ = loss.qvalue_loss(batch.clone())
        assert torch.allclose(ours["critic/loss"], q_loss, atol=1e-5), (step, ours["critic/loss"], q_loss)
        opt_q.zero_grad()
        q_loss.backward()
        opt_q.step()
        actor_step = (step + 1) % 2 == 0  # robomimic: update_freq=2, on the 2nd, 4th, ... step
        assert ("actor/loss" in ours) == actor_step
        if actor_step:
            a_loss, meta = loss.actor_loss(batch.clone())
            assert torch.allclose(ours["actor/loss"], a_loss, atol=1e-5), (step, ours["actor/loss"], a_loss)
            assert torch.allclose(ours["actor/bc_loss"], meta["bc_loss"], atol=1e-6)
            opt_a.zero_grad()
            a_loss.backward()
            opt_a.step()
            updater.step()
    assert_close_params(nets["actor"].backbone, actor.module.backbone, atol=1e-5)
    for i, m in enumerate(members(nets["critic"])):
        theirs = loss.qvalue_network_params.data[i]
        for (name, p) in m.named_parameters():
            assert torch.allclose(p, theirs.get(tuple(["module", "mlp"] + name.split("."))), atol=1e-5), name


def test_td3_bc_bc_term_matches_torchrl_bcloss():
    from torchrl.objectives import BCLoss

    from modmimic.components.losses.td3bc import td3_bc_actor

    algo = build("td3_bc", ["algo.actor.layer_dims=[16]", "algo.critic.layer_dims=[16]"])
    batch = transition_batch(7)
    out = td3_bc_actor(batch, algo.nets["actor"], algo.nets["critic"], alpha=2.5)
    actor = TensorDictModule(PolicyOnTensor(algo.nets["actor"]), in_keys=[OBS_KEY], out_keys=[K.ACTION])
    theirs = BCLoss(actor, loss_function="l2")(batch.clone())["loss_bc"]
    assert torch.allclose(out["bc_loss"], theirs, atol=1e-7)
