"""Every policy head's action distribution offers the operations its network lists in ``distribution_ops`` — with the
right shapes, gradients where reparameterised, and consistent log-densities — and refuses the others with an error
naming the head and the operation. CQL trains with an untanh'd Gaussian actor."""
import math

import pytest
import torch
from tensordict import TensorDict

from modmimic import keys as K
from modmimic.components.losses import bc, bcq, cql, critic, iql
from modmimic.components.nets.distributions import OPS, UnsupportedOperation, require_ops
from modmimic.components.nets.policy import policy
from modmimic.components.nets.vae import vae_actor
from modmimic.components.nets.value import rl_actor

OBS, A, B = {"x": (3,)}, 2, 4
SMALL_VAE = {"latent_dim": 2, "encoder_layer_dims": [8], "decoder_layer_dims": [8]}

HEADS = {
    "deterministic": lambda: policy(OBS, A, head="deterministic", layer_dims=[8]),
    "gaussian": lambda: policy(OBS, A, head="gaussian", layer_dims=[8]),
    "gaussian_tanh": lambda: policy(OBS, A, head="gaussian", layer_dims=[8],
                                    head_kwargs={"use_tanh": True, "std_activation": "exp"}),
    "gmm": lambda: policy(OBS, A, head="gmm", layer_dims=[8], head_kwargs={"num_modes": 3}),
    "gmm_tanh": lambda: policy(OBS, A, head="gmm", layer_dims=[8], head_kwargs={"num_modes": 3, "use_tanh": True}),
    "vae": lambda: vae_actor(OBS, A, vae=SMALL_VAE),
    "vae_categorical": lambda: vae_actor(OBS, A, vae={**SMALL_VAE, "prior": {"use_categorical": True,
                                                                               "categorical_dim": 3}}),
    "rl_actor_gaussian": lambda: rl_actor(OBS, A, layer_dims=[8], net={"type": "gaussian"}),
    "rl_actor_gaussian_tanh": lambda: rl_actor(OBS, A, layer_dims=[8], net={
        "type": "gaussian", "common": {"use_tanh": True}, "gaussian": {"std_activation": "exp"}}),
    "rl_actor_gmm": lambda: rl_actor(OBS, A, layer_dims=[8], net={"type": "gmm", "gmm": {"num_modes": 3}}),
    "rl_actor_gmm_tanh": lambda: rl_actor(OBS, A, layer_dims=[8], net={"type": "gmm", "common": {"use_tanh": True},
                                                                       "gmm": {"num_modes": 3}}),
}
EXPECTED_OPS = {
    "deterministic": {"sample", "rsample", "mode"},
    "gaussian": set(OPS), "gaussian_tanh": set(OPS), "rl_actor_gaussian": set(OPS), "rl_actor_gaussian_tanh": set(OPS),
    "gmm": {"sample", "log_prob", "mode", "sample_with_log_prob"},
    "gmm_tanh": {"sample", "log_prob", "mode", "sample_with_log_prob"},
    "rl_actor_gmm": {"sample", "log_prob", "mode", "sample_with_log_prob"},
    "rl_actor_gmm_tanh": {"sample", "log_prob", "mode", "sample_with_log_prob"},
    "vae": {"sample", "rsample"},
    "vae_categorical": {"sample"},
}


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({K.obs("x"): torch.randn(B, 3, generator=g),
                       K.ACTION: torch.rand(B, A, generator=g) * 1.6 - 0.8}, [B])


def reaches_parameters(net, out):
    net.zero_grad(set_to_none=True)
    out.sum().backward()
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def check_op(net, td, op):
    dist = net.dist(td)
    if op in ("sample", "rsample"):
        for shape in ((), (5,)):
            a = getattr(net.dist(td), op)(shape)
            assert a.shape == (*shape, B, A), (op, shape, a.shape)
            assert torch.isfinite(a).all()
        if op == "sample":
            assert not a.requires_grad
        else:
            assert reaches_parameters(net, net.dist(td).rsample((3,)))
    elif op == "log_prob":
        lp = dist.log_prob(td[K.ACTION])
        assert lp.shape == (B,) and torch.isfinite(lp).all()
        assert reaches_parameters(net, lp)
    elif op == "mode":
        m = dist.mode
        assert m.shape == (B, A) and torch.isfinite(m).all()
        if "log_prob" in net.distribution_ops:
            assert torch.isfinite(dist.log_prob(m)).all()
    else:  # (r)sample_with_log_prob
        for shape in ((), (5,)):
            d = net.dist(td)
            a, lp = getattr(d, op)(shape)
            assert a.shape == (*shape, B, A) and lp.shape == (*shape, B)
            with torch.no_grad():
                assert torch.allclose(lp, d.log_prob(a), atol=1e-5, rtol=1e-5), (lp, d.log_prob(a))
        if op == "rsample_with_log_prob":
            a, lp = net.dist(td).rsample_with_log_prob()
            assert reaches_parameters(net, a + lp.unsqueeze(-1))
        else:
            assert not a.requires_grad and not lp.requires_grad


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_listed_operation_works_and_the_others_are_refused_by_name(head):
    torch.manual_seed(0)
    net = HEADS[head]()
    net.train()
    assert net.distribution_ops == EXPECTED_OPS[head]
    td = batch()
    for op in sorted(OPS):
        if op in net.distribution_ops:
            check_op(net, td, op)
        else:
            dist = net.dist(td)
            name = type(getattr(net, "head", net)).__name__
            with pytest.raises(UnsupportedOperation, match=rf"(?s){name}.*no {op}\b"):
                out = getattr(dist, op)
                if callable(out):
                    out(td[K.ACTION]) if op == "log_prob" else out()


def test_closed_forms_of_mode_and_point_mass():
    torch.manual_seed(0)
    td = batch()
    det = HEADS["deterministic"]()
    a = det(td)
    assert torch.is_tensor(a)  # forward stays the bare action (BC's hot path)
    d = det.dist(td)
    assert torch.equal(d.mode, a) and torch.equal(d.rsample(), a) and torch.equal(d.sample((3,)), a.expand(3, B, A))
    gauss = HEADS["gaussian"]()
    assert torch.equal(gauss.dist(td).mode, gauss.dist(td).mean)
    tanh = HEADS["gaussian_tanh"]()
    dist = tanh.dist(td)
    assert torch.allclose(dist.mode, torch.tanh(dist.base.mean))
    gmm = HEADS["gmm"]()
    dist = gmm.dist(td)
    comp = dist.component_distribution.base_dist.loc  # [B, M, A]
    best = dist.mixture_distribution.probs.argmax(-1)
    assert torch.equal(dist.mode, comp[torch.arange(B), best])
    # the sample_with_log_prob of a mixture is a sample with its exact mixture density
    torch.manual_seed(3)
    x, lp = dist.sample_with_log_prob()
    logw = torch.log_softmax(dist.mixture_distribution.logits, -1)
    std = dist.component_distribution.base_dist.scale
    comp_lp = (-0.5 * ((x.unsqueeze(-2) - comp) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(lp, torch.logsumexp(logw + comp_lp, -1), atol=1e-5)


def test_gmm_tanh_policy_acts():
    """A tanh-wrapped GMM sampled through its (non-reparameterisable) base: acting used to call rsample and crash."""
    torch.manual_seed(0)
    net = HEADS["gmm_tanh"]()
    for mode in (True, False):
        net.train(mode)
        a = net.act(batch())
        assert a.shape == (B, A) and (a.abs() <= 1).all()


def test_loss_needs_are_declared_and_checked_against_heads():
    assert bc.nll.needs == {"policy": ("log_prob",)}
    assert iql.awr_actor.needs == {"policy": ("log_prob",)}
    assert "rsample_with_log_prob" in cql.sac_actor.needs["policy"]
    assert cql.cql_penalty.needs == {"policy": ("rsample_with_log_prob",)}
    assert set(critic.policy_target.needs["policy"]) == {"rsample", "rsample_with_log_prob"}
    assert bcq.sampler_target.needs == {"sampler": ("sample",)}
    for head in HEADS:
        require_ops(HEADS[head](), bcq.sampler_target.needs["sampler"])  # every policy can be sampled
    require_ops(HEADS["rl_actor_gaussian"](), cql.sac_actor.needs["policy"], "sac_actor(policy=actor)")
    with pytest.raises(ValueError, match=r"sac_actor\(policy=actor\) needs rsample_with_log_prob.*GMMHead"):
        require_ops(HEADS["rl_actor_gmm"](), cql.sac_actor.needs["policy"], "sac_actor(policy=actor)")
    with pytest.raises(ValueError, match=r"nll.*log_prob.*DeterministicHead"):
        require_ops(HEADS["deterministic"](), bc.nll.needs["policy"], "nll(policy=policy)")
    with pytest.raises(ValueError, match="not a policy network"):
        require_ops(torch.nn.Linear(2, 2), ("sample",), "x")


def test_cql_trains_with_an_untanhed_gaussian_actor():
    """``algo.actor.net.common.use_tanh=false`` crashed at the first step ('Independent' object has no attribute
    'rsample_with_log_prob')."""
    from modmimic.algo import algo_factory
    from modmimic.config import compose

    cfg = compose("cql", ["observation.modalities.obs.low_dim=[s]", "algo.actor.net.common.use_tanh=false",
                          "algo.actor.layer_dims=[16]", "algo.critic.layer_dims=[16]"])
    torch.manual_seed(0)
    algo = algo_factory(cfg.algo_name, cfg, {"s": (3,)}, A)
    assert algo.nets["actor"].distribution_ops == OPS
    algo.set_train()
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        done = torch.rand(8, 1, generator=g) < 0.2
        td = TensorDict({K.OBS: {"s": torch.randn(8, 3, generator=g)},
                         K.ACTION: torch.rand(8, A, generator=g) * 1.8 - 0.9,
                         K.NEXT: {K.OBS: {"s": torch.randn(8, 3, generator=g)}, "reward": torch.randn(8, 1, generator=g),
                                  "done": done, "terminated": done.clone()}}, [8])
        info = algo.log_info(algo.train_on_batch(algo.process_batch_for_training(td), epoch=1))
        losses = {k: v for k, v in info.items() if k.endswith("loss")}
        assert losses and all(math.isfinite(v) for v in losses.values()), losses
