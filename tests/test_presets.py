"""Presets (``preset=<name>``, ``modmimic/conf/preset/<name>.yaml``): values laid over a recipe before the command
line's overrides. ``robomimic`` (the default) changes nothing; ``fast`` holds the settings measured to learn the
scripted demonstrations in minutes (their learning is checked in tests/test_lift_e2e.py and docs/learning.md)."""
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from modmimic.config import (ConfigError, compose, list_presets, list_recipes, preset_family, preset_values,
                             recipe_lineage)
from modmimic.recipe import preset_text


def plain(cfg) -> dict:
    d = OmegaConf.to_container(cfg, resolve=True)
    d.pop("preset")
    return d


def test_the_default_preset_is_robomimic_and_changes_nothing():
    assert {"robomimic", "fast"} <= set(list_presets())
    default, explicit = compose("bc_rnn", []), compose("bc_rnn", ["preset=robomimic"])
    assert default.preset == "robomimic" and OmegaConf.to_container(default) == OmegaConf.to_container(explicit)
    assert default.algo.rnn.hidden_dim == 400 and default.algo.optim_params.policy.learning_rate.initial == 1e-4


def test_fast_preset_is_the_readme_override_list():
    """``recipe=bc_rnn preset=fast`` composes exactly what the long override list of the README's first set-up
    command composed (before presets existed) — the settings measured at 50/50 in Lift."""
    readme_list = ["train.num_epochs=12", "train.hdf5_normalize_obs=true",
                   "algo.optim_params.policy.learning_rate.initial=1e-3", "algo.rnn.hidden_dim=64",
                   "algo.actor_layer_dims=[]", "experiment.rollout.rate=12", "experiment.render_video=false"]
    assert plain(compose("bc_rnn", ["preset=fast"])) == plain(compose("bc_rnn", readme_list))


IMAGE_SETTINGS = ["train.hdf5_normalize_obs=true", "experiment.render_video=false",
                  "observation.modalities.obs.low_dim=[robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos]",
                  "observation.modalities.obs.rgb=[agentview_image,robot0_eye_in_hand_image]",
                  "observation.encoder.rgb.core_kwargs.backbone_class=ShallowConv",
                  "observation.encoder.rgb.core_kwargs.pool_class=null",
                  "observation.encoder.rgb.core_kwargs.backbone_kwargs.use_group_norm=false",
                  "observation.encoder.rgb.obs_randomizer_class=CropRandomizer", "train.batch_size=64"]


def test_fast_image_preset_is_the_measured_pixel_command_line():
    """``preset=fast_image`` composes exactly the override lists measured on Lift from pixels
    (docs/sim_figures.md): robomimic's image keys, ShallowConv with flattened features, 76x76 crops, normalized
    low-dim keys, batch 64; for ACT the small transformer with chunks of 10 (40 epochs), for Diffusion Policy To = 1,
    the fast UNet and DDIM (60 epochs); for BC-RNN (and BC-RNN-GMM, along its defaults chain) batches of 8 windows of
    10 steps, LSTM 128, 50 epochs; robomimic's encoder stays available as its JSON configures it (the recipe alone
    keeps ResNet18Conv + SpatialSoftmax)."""
    act = [*IMAGE_SETTINGS, "experiment.rollout.rate=40", "train.num_epochs=40", "algo.act.embed_dim=64",
           "algo.act.num_heads=4", "algo.act.hidden_dim=256", "algo.act.num_layers=1", "algo.act.chunk_size=10",
           "algo.act.vae.num_layers=1", "algo.optim_params.policy.learning_rate.initial=3e-4"]
    assert plain(compose("act", ["preset=fast_image"])) == plain(compose("act", act))
    measured = [*IMAGE_SETTINGS, "experiment.rollout.rate=60",
                "algo.horizon.observation_horizon=1", "train.num_epochs=60", "algo.unet.down_dims=[32,64]",
                "algo.unet.diffusion_step_embed_dim=32", "algo.ddpm.enabled=false", "algo.ddim.enabled=true",
                "algo.optim_params.policy.learning_rate.initial=1e-3",
                "algo.optim_params.policy.learning_rate.warmup_steps=100"]
    assert plain(compose("diffusion_policy", ["preset=fast_image"])) == plain(compose("diffusion_policy", measured))
    rnn = [*IMAGE_SETTINGS, "experiment.rollout.rate=50", "train.batch_size=8", "train.num_epochs=50",
           "algo.actor_layer_dims=[]", "algo.rnn.hidden_dim=128", "algo.optim_params.policy.learning_rate.initial=1e-3"]
    assert plain(compose("bc_rnn", ["preset=fast_image"])) == plain(compose("bc_rnn", rnn))
    assert plain(compose("bc_rnn_gmm", ["preset=fast_image"])) == plain(compose("bc_rnn_gmm", rnn))
    robomimic = compose("diffusion_policy", [])
    assert robomimic.observation.encoder.rgb.core_kwargs.backbone_class == "ResNet18Conv"
    assert robomimic.observation.encoder.rgb.core_kwargs.pool_class == "SpatialSoftmax"


def test_command_line_overrides_win_over_the_preset():
    cfg = compose("bc_rnn", ["preset=fast", "algo.rnn.hidden_dim=32", "train.num_epochs=3"])
    assert cfg.preset == "fast" and cfg.algo.rnn.hidden_dim == 32 and cfg.train.num_epochs == 3
    assert cfg.experiment.rollout.rate == 3  # the preset's interpolation follows the overridden epochs
    assert cfg.algo.optim_params.policy.learning_rate.initial == 1e-3  # the rest of the preset stays


def test_a_recipe_uses_the_nearest_entry_along_its_defaults_chain(tmp_path):
    assert recipe_lineage("bc_rnn_gmm")[:2] == ["bc_rnn_gmm", "bc_rnn"]
    assert preset_family("fast", "bc_rnn_gmm") == "bc_rnn"
    cfg = compose("bc_rnn_gmm", ["preset=fast"])
    assert cfg.algo.rnn.hidden_dim == 64 and cfg.algo.gmm.enabled
    # a user's recipe file extending a shipped one gets its parent's entry
    mine = tmp_path / "my_rnn.yaml"
    mine.write_text("# my BC-RNN\ndefaults: [bc_rnn, _self_]\nalgo: {rnn: {num_layers: 1}}\n")
    assert preset_family("fast", str(mine)) == "bc_rnn"
    cfg = compose(str(mine), ["preset=fast"])
    assert cfg.algo.rnn.hidden_dim == 64 and cfg.algo.rnn.num_layers == 1
    # no entry at all: only the preset's values for every recipe
    spec = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "modmimic", "conf", "preset", "fast.yaml"))
    orphan = tmp_path / "orphan.yaml"
    bc = open(os.path.join(os.path.dirname(__file__), "..", "recipes", "bc.yaml")).read()
    orphan.write_text(bc.replace("recipe_name: bc\n", "recipe_name: orphan\n"))
    assert recipe_lineage(str(orphan)) == ["orphan"]
    assert preset_family("fast", str(orphan)) is None
    assert OmegaConf.to_container(preset_values("fast", str(orphan))) == OmegaConf.to_container(spec.all)


def test_every_preset_sets_only_keys_every_recipe_has():
    from modmimic.config import valid_keys

    for r in list_recipes():
        valid = set(valid_keys(r))
        for p in list_presets():
            values = OmegaConf.to_container(preset_values(p, r), resolve=False)
            assert {k for k, _ in _leaves(values)} <= valid, (p, r)


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.slow
def test_every_recipe_composes_with_every_preset():
    for r in list_recipes():
        for p in list_presets():
            cfg = compose(r, [f"preset={p}"])
            assert cfg.preset == p, r


def test_unknown_preset_is_an_error_naming_the_closest():
    with pytest.raises(ConfigError, match=r"unknown preset 'fasst' \(did you mean 'fast'\?\)"):
        compose("bc", ["preset=fasst"])
    r = subprocess.run([sys.executable, "-m", "modmimic.train", "recipe=bc", "preset=fasst"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "unknown preset 'fasst'" in r.stderr and "fast, fast_image, robomimic" in r.stderr


def test_explain_lists_what_the_preset_changed():
    overrides = ["preset=fast", "algo.rnn.hidden_dim=32"]
    text = preset_text("bc_rnn", overrides, compose("bc_rnn", overrides))
    lines = text.splitlines()
    assert lines[0] == "preset fast (its 'bc_rnn' entry):"
    assert "  algo.optim_params.policy.learning_rate.initial: 0.0001 -> 0.001" in lines
    assert "  train.num_epochs: 2000 -> 12" in lines
    assert not any(line.startswith("  algo.rnn.hidden_dim") for line in lines)  # the command line's, not the preset's
    assert preset_text("bc_rnn", [], compose("bc_rnn", [])) == ""


def test_a_sweep_over_presets_composes_each_job():
    from modmimic.train import build_config, sweep_combinations

    jobs = sweep_combinations(["recipe=bc_rnn", "preset=robomimic,fast"])
    cfgs = [build_config(j) for j in jobs]
    assert sorted((c.preset, c.algo.rnn.hidden_dim) for c in cfgs) == [("fast", 64), ("robomimic", 400)]


def test_resuming_under_another_preset_is_refused(tmp_path, reach_hdf5, tiny):
    """A run continues with the settings it was trained with: ``preset=`` naming another preset is bad input."""
    from modmimic.train import main

    args = ["recipe=bc", f"dataset={reach_hdf5}", f"train.output_dir={tmp_path}", "train.num_epochs=1",
            "experiment.rollout.enabled=false", "experiment.logging.log_tb=false", *tiny("bc")]
    assert main(args) == 0
    before = sorted(os.listdir(tmp_path / "test"))
    assert main([*args, "resume=true", "preset=fast"]) == 2
    assert sorted(os.listdir(tmp_path / "test")) == before
    assert main([*args, "resume=true", "preset=robomimic", "train.num_epochs=2"]) == 0


def test_a_preset_without_an_entry_for_the_recipe_says_so_at_start_up(tmp_path):
    from modmimic.trainer import preset_note

    orphan = tmp_path / "orphan.yaml"  # a user's recipe that extends no shipped one: no entry of the fast preset
    cql = open(os.path.join(os.path.dirname(__file__), "..", "recipes", "cql.yaml")).read()
    orphan.write_text(cql.replace("recipe_name: cql\n", "recipe_name: orphan\n"))
    note = preset_note(compose(str(orphan), ["preset=fast"]))
    assert "preset 'fast' has no entry for recipe 'orphan'" in note and "2000 epochs x 100 steps at batch 1024" in note
    assert preset_note(compose(str(orphan), ["preset=fast", "train.num_epochs=3"])).count("3 epochs") == 1
    assert preset_note(compose(str(orphan))) is None  # robomimic: no recipe entries at all, nothing to say
    assert preset_note(compose("bc_rnn_gmm", ["preset=fast"])) is None  # bc_rnn's entry applies
    for r in ("rebrac", "cal_ql", "flow_policy", "cql"):
        assert preset_note(compose(r, ["preset=fast"])) is None


def test_every_shipped_recipe_has_a_fast_entry_or_inherits_one():
    shipped = sorted(p[:-5] for p in os.listdir(os.path.join(os.path.dirname(__file__), "..", "recipes"))
                     if p.endswith(".yaml"))
    assert len(shipped) >= 27 and "cql" in shipped and "gl_vae" in shipped
    assert [r for r in shipped if preset_family("fast", r) is None] == []
    assert preset_family("fast", "gl_vae") == "gl" and preset_family("fast", "bc_gaussian") == "bc"
