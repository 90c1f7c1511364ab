"""Loss modules and heads against closed forms and against torchrl's BCLoss on identical parameters and batches."""
import math

import pytest
import torch
from tensordict import TensorDict
from torch.distributions import Independent, Normal

from modmimic import keys as K
from modmimic.components.losses.bc import bc_regression, nll
from modmimic.components.nets.heads import GaussianHead, GMMHead, TanhWrapped
from modmimic.components.nets.policy import policy


def batch(B=6, T=None, D=3, A=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B,) if T is None else (B, T)
    return TensorDict({K.OBS: {"a": torch.randn(*shape, D, generator=g)},
                       K.ACTION: torch.rand(*shape, A, generator=g) * 1.8 - 0.9}, batch_size=shape)


class Fixed(torch.nn.Module):
    """A 'policy' returning a fixed prediction."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, td):
        return self.pred


def test_bc_regression_closed_form():
    b = batch()
    pred = torch.tensor([[0.5, -0.5]]).expand(6, 2)
    a = b[K.ACTION]
    out = bc_regression(b, Fixed(pred), l2_weight=1.0, l1_weight=0.5, cos_weight=2.0, cos_dims=2)
    l2 = ((pred - a) ** 2).mean()
    d = (pred - a).abs()
    l1 = torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()
    cos = (1 - (pred * a).sum(-1) / (pred.norm(dim=-1) * a.norm(dim=-1))).mean()
    assert torch.allclose(out["l2_loss"], l2) and torch.allclose(out["l1_loss"], l1)
    assert torch.allclose(out["cosine_loss"], cos, atol=1e-6)
    assert torch.allclose(out["loss"], l2 + 0.5 * l1 + 2.0 * cos, atol=1e-6)


def test_loss_mask_selects_supervised_steps():
    b = batch(B=4, T=3)
    pred = torch.zeros(4, 3, 2)
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[:, -1] = True
    b[K.LOSS_MASK] = mask
    out = bc_regression(b, Fixed(pred))
    assert torch.allclose(out["loss"], (b[K.ACTION][:, -1] ** 2).mean())


def test_nll_closed_form_gaussian():
    b = batch()
    mu, sd = torch.tensor([0.1, -0.2]), torch.tensor([0.3, 0.5])
    out = nll(b, Fixed(Independent(Normal(mu.expand(6, 2), sd.expand(6, 2)), 1)))
    a = b[K.ACTION]
    lp = (-0.5 * ((a - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(out["loss"], -lp.mean(), atol=1e-5)


def test_gmm_head_log_prob_closed_form_and_low_noise_eval():
    torch.manual_seed(0)
    head = GMMHead(4, 2, num_modes=3, min_std=0.01)
    h = torch.randn(5, 4)
    a = torch.rand(5, 2) * 1.8 - 0.9
    out = head.linear(h)
    means = torch.tanh(out[:, :6].reshape(5, 3, 2))
    stds = torch.nn.functional.softplus(out[:, 6:12].reshape(5, 3, 2)) + 0.01
    logw = torch.log_softmax(out[:, 12:], -1)
    comp = (-0.5 * ((a[:, None] - means) / stds) ** 2 - stds.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(head(h).log_prob(a), torch.logsumexp(logw + comp, -1), atol=1e-5)
    head.eval()
    acts = head.act(h)
    # low-noise evaluation: every action is (within 1e-3) one of the mode means
    assert ((acts[:, None] - means).abs().max(-1).values.min(-1).values < 1e-3).all()


def test_gaussian_head_std_activation_and_eval_mean():
    head = GaussianHead(3, 2, init_std=0.3, std_activation="softplus", min_std=0.01)
    torch.nn.init.zeros_(head.linear.weight)
    torch.nn.init.zeros_(head.linear.bias)
    d = head(torch.zeros(1, 3))
    assert torch.allclose(d.base_dist.scale, torch.full((1, 2), 0.3))  # softplus(0) scaled to init_std
    head.eval()
    assert torch.equal(head.act(torch.zeros(1, 3)), torch.zeros(1, 2))


def test_tanh_wrapped_log_prob_change_of_variables():
    base = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    d = TanhWrapped(base)
    x = torch.tensor([0.3, -1.2])
    y = torch.tanh(x)
    expected = base.log_prob(x) - torch.log(1 - y ** 2 + 1e-6).sum()
    assert torch.allclose(d.log_prob(y, pre_tanh_value=x), expected)
    assert torch.allclose(d.log_prob(y), expected, atol=1e-4)


@pytest.mark.parametrize("head,head_kwargs,loss_function", [
    ("deterministic", {}, "l2"), ("gmm", {"num_modes": 3}, None), ("gaussian", {}, None)])
def test_matches_torchrl_bcloss(head, head_kwargs, loss_function):
    """Same parameters, same batch: modmimic's BC loss equals torchrl's BCLoss (MSE, or NLL via get_dist)."""
    from tensordict.nn import TensorDictModule
    from tensordict.nn import ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential
    from torchrl.objectives import BCLoss

    torch.manual_seed(0)
    pol = policy({"a": (3,)}, 2, backbone="mlp", layer_dims=[16], head=head, head_kwargs=head_kwargs)
    b = batch(B=8)
    ours = (bc_regression(b, pol) if head == "deterministic" else nll(b, pol))["loss"]

    if head == "deterministic":
        actor = TensorDictModule(lambda x: pol(TensorDict({K.OBS: {"a": x}}, x.shape[:1])),
                                 in_keys=[K.obs("a")], out_keys=[K.ACTION])
        loss = BCLoss(actor, loss_function="l2")
    else:
        # the backbone feature is written as "loc" so that BCLoss takes its likelihood branch (get_dist)
        feats = TensorDictModule(lambda x: pol.backbone(x), in_keys=[K.obs("a")], out_keys=["loc"])
        prob = ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=[K.ACTION], distribution_class=_HeadDist,
                                             distribution_kwargs={"head": pol.head})
        actor = ProbabilisticTensorDictSequential(feats, prob)
        loss = BCLoss(actor)
    theirs = loss(b.clone())["loss_bc"]
    assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)


class _HeadDist:
    """Adapter so torchrl's probabilistic module builds the distribution with modmimic's head."""

    def __new__(cls, loc, head):
        return head(loc)
