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

    import modmimic.recipefiles as recipefiles

    monkeypatch.setattr(config, "find_recipe", no_recipe_files)
    monkeypatch.setattr(recipefiles, "find_recipe", no_recipe_files)
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


USER_MODULE = '''
import numpy as np
import torch
from torch import nn


class TinyViT(nn.Module):
    """A patch-embedding transformer trunk: [B, C, H, W] -> [B, dim, H/patch, W/patch] (what VisualCore pools)."""

    def __init__(self, input_shape, patch=4, dim=8):
        super().__init__()
        c, h, w = input_shape
        self.embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.block = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.out = (dim, h // patch, w // patch)

    def output_shape(self, input_shape=None):
        return list(self.out)

    def forward(self, x):
        y = self.embed(x)
        b, d, h, w = y.shape
        return self.block(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, d, h, w)


class LineEnv:
    """A user's environment adapter: reach 0 on a line."""

    def __init__(self, meta, render=False, use_image_obs=False, use_depth_obs=False):
        self.name, self.type, self.action_dimension, self.success_signal = meta["env_name"], 2, 2, "distance"
        self.x = np.zeros(2)

    def reset(self, seed=None):
        self.x = np.random.default_rng(seed).uniform(-1, 1, 2)
        return self._obs()

    def _obs(self):
        return {"pos": self.x.copy(), "goal_pos": np.zeros(2), "vel": np.zeros(2)}

    def step(self, action):
        self.x = self.x + 0.1 * np.asarray(action)
        return self._obs(), 0.0, False, {}

    def is_success(self):
        return {"task": bool(np.linalg.norm(self.x) < 0.05)}
'''


def test_user_module_backbone_and_env_adapter(tmp_path, monkeypatch, tiny):
    """An image backbone and an env adapter in a user's own module, named by dotted path: a command-line config
    builds them; a stored config (checkpoint, dataset env_args) only when the module is trusted."""
    import sys

    import torch

    from modmimic.algo import algo_factory
    from modmimic.envs import EnvError, env_from_metadata
    from modmimic.trust import ENV_VAR

    (tmp_path / "mymods.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymods", None)
    cfg = compose("bc", tiny("bc") + ["observation.modalities.obs.low_dim=[pos]",
                                      "observation.modalities.obs.rgb=[image]",
                                      "observation.encoder.rgb.core_kwargs.backbone_class=mymods.TinyViT",
                                      "+observation.encoder.rgb.core_kwargs.backbone_kwargs.patch=4"])
    algo = algo_factory("bc", cfg, {"pos": (2,), "image": (16, 16, 3)}, 2)
    assert any(type(m).__name__ == "TinyViT" for m in algo.nets.modules())
    a = algo.get_action({"pos": torch.zeros(1, 2), "image": torch.zeros(1, 16, 16, 3, dtype=torch.uint8)})
    assert a.shape == (1, 2)
    meta = {"env_name": "Line", "type": 2, "env_kwargs": {}, "adapter": "mymods.LineEnv"}
    with pytest.raises(EnvError, match="outside the trusted modules"):
        env_from_metadata(meta)
    monkeypatch.setenv(ENV_VAR, "mymods")
    env = env_from_metadata(meta)
    assert type(env).__name__ == "LineEnv" and set(env.reset(seed=0)) == {"pos", "goal_pos", "vel"}


def test_diffusion_windows_are_checked_at_compose_time():
    """robomimic 0.5's own Diffusion Policy template (seq_length 1, frame_stack 1) is refused before anything
    runs, naming both keys (it used to fail in the first training step, exit 1)."""
    from modmimic.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.frame_stack=1 and train.seq_length=1 .* set train.frame_stack=2"):
        compose("diffusion_policy", ["train.seq_length=1", "train.frame_stack=1"])
