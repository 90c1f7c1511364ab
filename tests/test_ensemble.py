"""The stacked Q ensemble equals N separate member MLPs: same seeded initialisation, same outputs, and one Adam with
per-member gradient clipping over the stacked weights follows the trajectory of one Adam and one clip per member
(robomimic's separate critic optimizers)."""
import copy

import pytest
import torch
from tensordict import TensorDict

from modmimic import keys as K
from modmimic.components.nets.core import mlp
from modmimic.components.nets.value import QEnsemble

OBS, A, LAYERS = {"x": (3,)}, 2, (8, 6)


def td(B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({K.obs("x"): torch.randn(B, 3, generator=g), K.ACTION: torch.rand(B, A, generator=g) * 2 - 1},
                      [B])


@pytest.mark.parametrize("n", [1, 3])
def test_seeded_init_equals_independent_member_mlps_and_outputs_match(n):
    torch.manual_seed(4)
    q = QEnsemble(OBS, A, layer_dims=LAYERS, n=n, value_bounds=(-1.0, 2.0))
    torch.manual_seed(4)
    refs = [mlp(3 + A, 1, LAYERS) for _ in range(n)]  # the old ModuleList of members, same RNG order
    for i, ref in enumerate(refs):
        mine = q.member(i)
        for (name, p), (ref_name, r) in zip(mine.named_parameters(), ref.named_parameters()):
            assert name == ref_name and torch.equal(p, r), name
    b = td()
    for action in (b[K.ACTION], torch.rand(5, 4, A) * 2 - 1, torch.rand(5, 120, A) * 2 - 1):
        # one action, or candidates per state (600 rows: the per-member GEMM path for tall inputs)
        x = torch.cat([b[K.obs("x")].unsqueeze(-2).expand(*action.shape[:-1], 3) if action.dim() == 3
                       else b[K.obs("x")], action], -1)
        expected = torch.stack([0.5 + 1.5 * torch.tanh(r(x)) for r in refs])
        out = q(b, action)
        assert out.shape == (n, *action.shape[:-1], 1)
        assert torch.allclose(out, expected, atol=1e-6)
        assert torch.allclose(q.q1(b, action), expected[0], atol=1e-6)


@pytest.mark.parametrize("rows", [5, 600])  # the batched path and the per-member GEMM path for tall inputs
def test_one_adam_with_per_member_clipping_equals_separate_optimizers_and_clips(rows):
    torch.manual_seed(0)
    q = QEnsemble(OBS, A, layer_dims=LAYERS, n=2)
    refs = [q.member(i) for i in range(2)]
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    ref_opts = [torch.optim.Adam(r.parameters(), lr=1e-2) for r in refs]
    max_norm = 0.05  # small: both members are clipped, by different factors
    for step in range(4):
        b = td(rows, seed=step)
        y = torch.randn(rows, 1, generator=torch.Generator().manual_seed(100 + step))
        opt.zero_grad()
        ((q(b, b[K.ACTION]) - y) ** 2).mean((1, 2)).sum().backward()
        norms = q.clip_grad_norm_per_member_(max_norm)
        opt.step()
        x = torch.cat([b[K.obs("x")], b[K.ACTION]], -1)
        for i, (r, o) in enumerate(zip(refs, ref_opts)):
            o.zero_grad()
            ((r(x) - y) ** 2).mean().backward()
            ref_norm = torch.nn.utils.clip_grad_norm_(r.parameters(), max_norm)
            assert torch.allclose(norms[i], ref_norm, rtol=1e-5), (step, i, norms[i], ref_norm)
            assert ref_norm > max_norm
            o.step()
    for i, r in enumerate(refs):
        for name, p in r.named_parameters():
            assert torch.allclose(q.member_state_dict(i)[name], p, atol=1e-6), (i, name)


def test_algo_clips_each_stacked_critic_member_and_logs_its_norm():
    from modmimic.algo import algo_factory
    from modmimic.config import compose

    cfg = compose("td3_bc", ["observation.modalities.obs.low_dim=[x]", "algo.actor.layer_dims=[8]",
                             "algo.critic.layer_dims=[8]", "algo.critic.max_gradient_norm=0.01"])
    torch.manual_seed(0)
    algo = algo_factory(cfg.algo_name, cfg, OBS, A)
    critic = algo.nets["critic"]
    before = copy.deepcopy(critic)
    algo.set_train()
    b = td(8)
    b[K.NEXT] = TensorDict({K.OBS: {"x": torch.randn(8, 3)}, "reward": torch.randn(8, 1),
                            "done": torch.zeros(8, 1, dtype=torch.bool),
                            "terminated": torch.zeros(8, 1, dtype=torch.bool)}, [8])
    info = algo.train_on_batch(algo.process_batch_for_training(b), epoch=1)
    norms = [info[k] for k in ("critic/grad_norm1", "critic/grad_norm2")]
    assert all(n > 0.01 for n in norms) and norms[0] != norms[1]
    # the gradient each member stepped with was clipped to its own norm 0.01: Adam's first step moves every
    # parameter by lr (sign of the gradient) regardless of scale, so check the clipped gradients directly
    for lay in critic.layers:
        g = lay.weight.grad.reshape(2, -1)
        assert g.norm(dim=1).max() <= 0.01 + 1e-6
    assert not torch.equal(before.layers[0].weight, critic.layers[0].weight)
