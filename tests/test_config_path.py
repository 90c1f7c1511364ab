"""One configuration path (issue #24): robomimic's variant flags are resolved when a config is composed, so the
built algorithm, config.yaml and checkpoints carry the final structure and nothing reads a recipe file after
composition; a training run composes once."""
import os

import numpy as np
import pytest

from modmimic.config import compose
from modmimic.policy import policy_from_checkpoint


def test_flags_pick_the_variant_at_compose_time():
    assert compose("bc", ["algo.rnn.enabled=true", "algo.rnn.horizon=10", "train.seq_length=10"]).recipe_name == \
        "bc_rnn"
    assert compose("bcq", ["algo.action_sampler.gmm.enabled=true"]).recipe_name == "bcq_gmm"
    hbc = compose("hbc", ["algo.planner.vae.enabled=false"])
    assert hbc.recipe_name == "hbc" and hbc.components.planner.recipe == "gl"
    assert "vae" not in str(hbc.components.planner.nets)  # the GL planner's networks, not GL-VAE's
    assert compose("hbc", []).components.planner.recipe == "gl_vae"


@pytest.mark.parametrize("recipe,extra", [("hbc", ["algo.planner.vae.enabled=false"]), ("iris", []),
                                          ("bcq", ["algo.action_sampler.gmm.enabled=true"])])
def test_checkpoint_acts_without_recipe_files(recipe, extra, reach_hdf5, tmp_path, tiny, monkeypatch):
    """A checkpoint builds and acts with every recipe file unreadable: its config is the whole structure."""
    import modmimic.config as config
    from modmimic.trainer import train

    run = train(compose(recipe, [f"train.data={reach_hdf5}", f"train.output_dir={tmp_path}", "train.batch_size=8",
                                 "train.num_epochs=1", "experiment.epoch_every_n_steps=2",
                                 "experiment.logging.log_tb=false", *tiny(recipe), *extra]), progress=False)
    path = os.path.join(run["run_dir"], "models", "last.pth")
    obs = {"pos": np.ones(2, np.float32), "goal_pos": np.zeros(2, np.float32), "vel": np.zeros(2, np.float32)}
    goal = {k: v + 0.5 for k, v in obs.items()}

    def act():
        import torch

        torch.manual_seed(0)
        policy, _ = policy_from_checkpoint(ckpt_path=path)
        policy.start_episode()
        return policy(obs, goal=goal)

    before = act()

    def no_recipe_files(name):
        raise AssertionError(f"recipe file {name!r} read after composition")

    monkeypatch.setattr(config, "find_recipe", no_recipe_files)
    np.testing.assert_array_equal(act(), before)


def test_a_run_composes_once(reach_hdf5, tmp_path, tiny, monkeypatch):
    import hydra

    import modmimic.train as cli

    args = [f"dataset={reach_hdf5}", f"train.output_dir={tmp_path}", "train.batch_size=8", "train.num_epochs=1",
            "experiment.epoch_every_n_steps=2", "experiment.logging.log_tb=false", *tiny("bc")]
    calls = []
    real = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(cli, "_run_hydra", lambda *a, **k: calls.append("hydra.main"))
    code = cli.main(args)
    assert code == 0 and calls == [1], calls
