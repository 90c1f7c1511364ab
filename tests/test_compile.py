"""``train.compile``: the compiled training step computes what the eager one does, for flat and hierarchical recipes.

The fast tests trace through dynamo with the ``eager`` backend (every graph break, guard and recompile that
``torch.compile`` meets, without inductor's C++ build); the slow test uses inductor itself."""
import pytest
import torch

from modmimic.algo import algo_factory
from modmimic.config import all_obs_keys, compose
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler

STEPS = 4


def train_steps(recipe, path, tiny, *extra):
    cfg = compose(recipe, [*tiny(recipe), "train.batch_size=8", *extra])
    torch.manual_seed(0)
    store = load_episode_store(str(path), all_obs_keys(cfg), load_next_obs=True)
    sampler = WindowSampler(store, 8, seq_length=cfg.train.seq_length, frame_stack=cfg.train.frame_stack, seed=0)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    algo.set_train()
    losses = []
    torch._dynamo.utils.counters.clear()
    for _ in range(STEPS):
        info = algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
        losses.append(algo.log_info(info)["Loss"])
    if cfg.train.compile:  # the step really went through dynamo (an ignored flag would pass the comparison)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    return losses, {k: v.detach().clone() for k, v in algo.nets.state_dict().items()}


def assert_same_run(eager, compiled, tol):
    (l_e, p_e), (l_c, p_c) = eager, compiled
    assert l_c == pytest.approx(l_e, rel=tol, abs=tol)
    assert p_e.keys() == p_c.keys()
    for k in p_e:
        torch.testing.assert_close(p_c[k], p_e[k], rtol=tol, atol=tol, msg=k)


@pytest.mark.parametrize("recipe", ["bc_rnn", "iql", "cql", "hbc", *(pytest.param(r, marks=pytest.mark.slow)
                                                                   for r in ("bc", "td3_bc", "bcq"))])
def test_compiled_step_equals_eager(recipe, reach_hdf5, tiny):
    torch._dynamo.reset()
    eager = train_steps(recipe, reach_hdf5, tiny)
    compiled = train_steps(recipe, reach_hdf5, tiny, "train.compile=true", "train.compile_backend=eager")
    assert_same_run(eager, compiled, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["bc", "iql"])
def test_inductor_step_equals_eager(recipe, reach_hdf5, tiny):
    torch._dynamo.reset()
    eager = train_steps(recipe, reach_hdf5, tiny)
    compiled = train_steps(recipe, reach_hdf5, tiny, "train.compile=true")
    assert_same_run(eager, compiled, 1e-4)


@pytest.mark.parametrize("recipe", ["iql", "cql", "diffusion_policy"])
def test_fused_optimizer_step_equals_the_default_one(recipe, reach_hdf5, tiny):
    # train.fused_optimizer: torch's fused Adam/AdamW kernel, the same update up to float rounding (CQL: Scalar
    # parameters too; Diffusion Policy: AdamW)
    default = train_steps(recipe, reach_hdf5, tiny)
    fused = train_steps(recipe, reach_hdf5, tiny, "train.fused_optimizer=true")
    assert_same_run(default, fused, 1e-5)
    cfg = compose(recipe, [*tiny(recipe), "train.fused_optimizer=true"])
    store = load_episode_store(str(reach_hdf5), all_obs_keys(cfg), load_next_obs=True)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    assert algo.program.optimizers and all(o.defaults["fused"] for o in algo.program.optimizers.values())


def test_fused_optimizer_and_compile_are_one_choice(reach_hdf5, tiny):
    from modmimic.config import ConfigError

    with pytest.raises(ConfigError, match="train.fused_optimizer=true and train.compile=true"):
        train_steps("bc", reach_hdf5, tiny, "train.fused_optimizer=true", "train.compile=true")
