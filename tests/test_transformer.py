"""The GPT-style transformer backbone (BC-Transformer): shapes, causality, dropout modes, embeddings, errors,
and the policy built around it."""
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from modmimic.components.nets.policy import policy
from modmimic.components.nets.transformer import TransformerBackbone, sinusoidal_table

SMALL = dict(embed_dim=16, num_layers=2, num_heads=2, context_length=6)
EMBEDDINGS = {
    "parameter": dict(nn_parameter_for_timesteps=True),
    "sinusoidal": dict(nn_parameter_for_timesteps=False, sinusoidal_embedding=True),
    "embedding": dict(nn_parameter_for_timesteps=False, sinusoidal_embedding=False),
}


def make(**kw):
    torch.manual_seed(0)
    return TransformerBackbone(5, **{**SMALL, **kw})


def test_output_shape_and_attributes():
    bb = make()
    assert bb.recurrent is False and bb.output_dim == 16
    assert bb(torch.randn(3, 6, 5)).shape == (3, 6, 16)
    # extra leading dims are carried through
    assert bb(torch.randn(2, 3, 4, 5)).shape == (2, 3, 4, 16)


@pytest.mark.parametrize("activation", ["gelu", "geglu"])
@pytest.mark.parametrize("emb", list(EMBEDDINGS))
def test_causal(activation, emb):
    bb = make(activation=activation, **EMBEDDINGS[emb]).eval()
    x = torch.randn(2, 6, 5)
    y = bb(x)
    for t in range(6):
        x2 = x.clone()
        x2[:, t] += torch.randn(2, 5)
        y2 = bb(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(y2[:, t], y[:, t])  # the changed step itself does see its input


def test_later_steps_see_earlier_ones():
    bb = make().eval()
    x = torch.randn(1, 6, 5)
    x2 = x.clone()
    x2[:, 0] += 1.0
    y, y2 = bb(x), bb(x2)
    assert all(not torch.allclose(y[:, t], y2[:, t]) for t in range(6))


def test_eval_deterministic_train_stochastic():
    bb = make(emb_dropout=0.2, attn_dropout=0.2, block_output_dropout=0.2)
    x = torch.randn(4, 6, 5)
    bb.eval()
    torch.testing.assert_close(bb(x), bb(x), rtol=0, atol=0)
    bb.train()
    assert not torch.allclose(bb(x), bb(x))


def test_train_without_dropout_is_deterministic():
    bb = make(emb_dropout=0.0, attn_dropout=0.0, block_output_dropout=0.0).train()
    x = torch.randn(4, 6, 5)
    torch.testing.assert_close(bb(x), bb(x))


def test_geglu_doubles_first_projection():
    bb = make(activation="geglu")
    first = bb.blocks[0].mlp[0]
    assert first.out_features == 2 * 4 * 16 and bb.blocks[0].mlp[2].in_features == 4 * 16
    y = bb(torch.randn(2, 6, 5))
    assert y.shape == (2, 6, 16) and torch.isfinite(y).all()
    assert make(activation="gelu").blocks[0].mlp[0].out_features == 4 * 16


@pytest.mark.parametrize("emb", list(EMBEDDINGS))
def test_shorter_sequence_uses_first_timestep_embeddings(emb):
    bb = make(**EMBEDDINGS[emb]).eval()
    if emb != "sinusoidal":  # give the learned tables distinct rows (the parameter table starts at zero)
        with torch.no_grad():
            table = bb.timestep_emb if emb == "parameter" else bb.timestep_emb.weight
            table.normal_()
    x = torch.randn(2, 6, 5)
    full = bb(x)
    for T in (1, 3, 5):
        torch.testing.assert_close(bb(x[:, :T]), full[:, :T], rtol=0, atol=1e-6)
    # the timestep embedding matters: shifting the window changes the output of the same token
    shifted = bb(torch.cat([torch.zeros(2, 1, 5), x[:, :1]], dim=1))[:, 1]
    alone = bb(x[:, :1])[:, 0]
    assert not torch.allclose(shifted, alone)


def test_timestep_embedding_kinds():
    assert make(**EMBEDDINGS["parameter"]).timestep_emb.shape == (1, 6, 16)
    assert isinstance(make(**EMBEDDINGS["parameter"]).timestep_emb, nn.Parameter)
    assert isinstance(make(**EMBEDDINGS["embedding"]).timestep_emb, nn.Embedding)
    sin = make(**EMBEDDINGS["sinusoidal"])
    assert not any(p is sin.timestep_emb for p in sin.parameters())
    table = sinusoidal_table(4, 6)
    assert table.shape == (4, 6)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(table[2, 0], torch.sin(torch.tensor(2.0)))
    torch.testing.assert_close(table[2, 1], torch.cos(torch.tensor(2.0)))
    assert sinusoidal_table(3, 5).shape == (3, 5)  # odd widths work


def test_init():
    bb = make(**EMBEDDINGS["embedding"])
    lin = [m for m in bb.modules() if isinstance(m, nn.Linear)]
    w = torch.cat([m.weight.flatten() for m in lin] + [bb.timestep_emb.weight.flatten()])
    assert abs(w.std().item() - 0.02) < 0.004
    assert all(m.bias is None or (m.bias == 0).all() for m in lin)
    assert bb.blocks[0].attn.qkv.bias is None
    for m in bb.modules():
        if isinstance(m, nn.LayerNorm):
            assert (m.weight == 1).all() and (m.bias == 0).all()


def test_errors():
    with pytest.raises(ValueError, match="divisible"):
        TransformerBackbone(5, embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="activation"):
        TransformerBackbone(5, **SMALL, activation="relu")
    bb = make()
    with pytest.raises(ValueError, match="context_length"):
        bb(torch.randn(2, 7, 5))
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        bb(torch.randn(2, 5))
    with pytest.raises(TypeError):
        TransformerBackbone(5, **SMALL, enabled=True)


TCFG = dict(enabled=True, supervise_all_steps=False, pred_future_acs=False, embed_dim=16, num_layers=1,
            num_heads=2, context_length=5, emb_dropout=0.1, attn_dropout=0.1, block_output_dropout=0.1,
            sinusoidal_embedding=False, activation="gelu", nn_parameter_for_timesteps=True)


def test_policy_end_to_end_gmm():
    torch.manual_seed(0)
    pol = policy(obs_shapes={"a": (3,)}, ac_dim=2, backbone="transformer", transformer=TCFG, head="gmm",
                 head_kwargs={"num_modes": 3})
    assert isinstance(pol.backbone, TransformerBackbone) and not pol.recurrent
    td = TensorDict({"observation": {"a": torch.randn(4, 5, 3)}}, batch_size=[4, 5])
    dist = pol(td)
    assert dist.batch_shape == (4, 5) and dist.event_shape == (2,)
    lp = dist.log_prob(torch.rand(4, 5, 2) * 2 - 1)
    assert lp.shape == (4, 5) and torch.isfinite(lp).all()
    (-lp.mean()).backward()
    assert pol.backbone.token_proj.weight.grad is not None
    pol.eval()
    a = pol.act(td)
    assert a.shape == (4, 5, 2) and (a.abs() <= 1).all()


def test_adam_reduces_loss():
    torch.manual_seed(0)
    bb = TransformerBackbone(3, embed_dim=16, num_layers=1, num_heads=2, context_length=4, emb_dropout=0.0,
                             attn_dropout=0.0, block_output_dropout=0.0)
    head = nn.Linear(16, 2)
    x = torch.randn(8, 4, 3)
    target = torch.tanh(torch.cumsum(x[..., :2], dim=1))  # depends on the past: needs attention
    params = list(bb.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)

    def loss_fn():
        return ((head(bb(x)) - target) ** 2).mean()

    first = loss_fn().item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.5 * first
