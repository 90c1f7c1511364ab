"""robomimic JSON experiment configs (laid out as robomimic's Config classes dump them, built by
tests/robomimic_layout.py) compose to the same config as the equivalent recipe + overrides, train a step per
family, and export back; keys modmimic cannot honour are exit-2 errors naming them."""
import json
import os

import pytest
import yaml

from modmimic.config import ConfigError, compose, to_plain
from modmimic.robomimic_config import compose_json, expand_args, leaves, recipe_defaults, to_robomimic
from modmimic.train import main
from robomimic_layout import LOW_DIM, config, set_key

# robomimic's defaults that every recipe differs in: the output folder (robomimic: relative to its package)
OUT = {"bc": "../bc_trained_models"}


def write(tmp_path, cfg: dict, name: str = "exp.json") -> str:
    path = str(tmp_path / name)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=4)
    return path


def edited(algo_name: str, version: str, changes: dict) -> dict:
    cfg = config(algo_name, version)
    for k, v in changes.items():
        set_key(cfg, k, v)
    return cfg


def as_overrides(changes: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}".replace('"', "'") if not isinstance(v, bool) else f"{k}={str(v).lower()}"
            for k, v in changes.items()]


# (algo_name, version, changes written into the JSON, recipe, extra overrides the recipe needs to equal it)
CASES = [
    pytest.param("bc", "0.5", {}, "bc", [], marks=pytest.mark.slow),
    pytest.param("bc", "0.3", {"algo.actor_layer_dims": [64, 64]}, "bc", [], marks=pytest.mark.slow),
    ("bc", "0.5", {"algo.gaussian.enabled": True, "algo.gaussian.fixed_std": True}, "bc_gaussian", []),
    ("bc", "0.5", {"algo.gmm.enabled": True, "algo.gmm.num_modes": 3}, "bc_gmm", []),
    ("bc", "0.5", {"algo.vae.enabled": True, "algo.vae.prior.learn": True, "algo.vae.prior.is_conditioned": True,
                   "algo.vae.prior.use_gmm": True, "algo.vae.prior.gmm_learn_weights": True}, "bc_vae", []),
    pytest.param("bc", "0.5", {"algo.vae.enabled": True, "algo.vae.prior.learn": True,
                               "algo.vae.prior.use_categorical": True, "algo.vae.prior.categorical_dim": 4},
                 "bc_vae", [], marks=pytest.mark.slow),
    ("bc", "0.3", {"algo.rnn.enabled": True, "train.seq_length": 10, "algo.rnn.hidden_dim": 100}, "bc_rnn", []),
    ("bc", "0.5", {"algo.rnn.enabled": True, "algo.gmm.enabled": True, "train.seq_length": 10,
                   "algo.rnn.rnn_type": "GRU"}, "bc_rnn_gmm", []),
    ("bc", "0.5", {"algo.transformer.enabled": True, "train.frame_stack": 10, "train.seq_length": 1,
                   "algo.optim_params.policy.optimizer_type": "adamw",
                   "algo.optim_params.policy.learning_rate.scheduler_type": "linear",
                   "algo.optim_params.policy.learning_rate.decay_factor": 1.0,
                   "algo.optim_params.policy.learning_rate.epoch_schedule": [100],
                   "algo.optim_params.policy.regularization.L2": 0.01}, "bc_transformer", []),
    pytest.param("bc", "0.5", {"algo.transformer.enabled": True, "algo.gmm.enabled": True, "train.frame_stack": 10},
                 "bc_transformer_gmm", [], marks=pytest.mark.slow),
    pytest.param("bcq", "0.5", {}, "bcq", [], marks=pytest.mark.slow),
    ("bcq", "0.3", {"algo.action_sampler.vae.enabled": False, "algo.action_sampler.gmm.enabled": True}, "bcq_gmm", []),
    ("bcq", "0.5", {"algo.critic.distributional.enabled": True, "algo.critic.value_bounds": [-1.0, 1.0],
                    "algo.actor.enabled": False}, "bcq_distributional", []),
    ("bcq", "0.5", {"algo.actor.enabled": True, "algo.critic.ensemble.n": 3}, "bcq", []),
    ("cql", "0.5", {"algo.critic.cql_weight": 5.0}, "cql", []),
    ("iql", "0.3", {"algo.vf_quantile": 0.7, "algo.actor.net.type": "gmm"}, "iql", []),
    ("td3_bc", "0.5", {"algo.alpha": 1.0}, "td3_bc", []),
    ("hbc", "0.5", {"algo.planner.vae.enabled": False, "algo.mode": "cascade"}, "hbc", []),
    ("iris", "0.3", {"algo.value_planner.num_samples": 20}, "iris", []),
    ("diffusion_policy", "0.5", {"algo.ddpm.enabled": False, "algo.ddim.enabled": True}, "diffusion_policy", []),
    # the image variant: VisualCore / ResNet18Conv / SpatialSoftmax / CropRandomizer, as robomimic's image configs
    ("bc", "0.5", {"algo.rnn.enabled": True, "train.seq_length": 10,
                   "observation.modalities.obs.rgb": ["agentview_image"],
                   "observation.encoder.rgb.core_kwargs": {
                       "feature_dimension": 64, "backbone_class": "ResNet18Conv",
                       "backbone_kwargs": {"pretrained": False, "input_coord_conv": False},
                       "pool_class": "SpatialSoftmax",
                       "pool_kwargs": {"num_kp": 32, "learnable_temperature": False, "temperature": 1.0,
                                       "noise_std": 0.0}},
                   "observation.encoder.rgb.obs_randomizer_class": "CropRandomizer",
                   "observation.encoder.rgb.obs_randomizer_kwargs": {"crop_height": 76, "crop_width": 76,
                                                                    "num_crops": 1, "pos_enc": False}},
     "bc_rnn", []),
]


def reference(algo_name, version, changes, recipe, extra):
    """The same configuration from the recipe and overrides: the robomimic defaults it differs in, then the edits."""
    base = dict(leaves(config(algo_name, version)))
    ref = dict(leaves(recipe_defaults(recipe)))
    # robomimic's dump holds every key: where the recipe's default differs, the JSON's value is an override too
    defaults = {k: v for k, v in base.items() if k in ref and ref[k] != v and v != {}
                and not k.startswith("observation.actor.modalities.goal.")}
    flat = dict(defaults)
    for k, v in changes.items():
        flat.update(leaves(v, k + ".") if isinstance(v, dict) and v else {k: v})
    flat = {k: v for k, v in flat.items() if v != {}}
    return compose(recipe, as_overrides(flat) + extra)


@pytest.mark.parametrize("algo_name,version,changes,recipe,extra", CASES,
                         ids=[f"{c[0]}-{c[3]}-{c[1]}-{i}" for i, c in
                              enumerate(c.values if hasattr(c, "values") else c for c in CASES)])
def test_json_composes_to_recipe_plus_overrides(algo_name, version, changes, recipe, extra, tmp_path):
    path = write(tmp_path, edited(algo_name, version, changes))
    cfg = compose_json(path)
    assert cfg.recipe_name == recipe
    assert to_plain(cfg) == to_plain(reference(algo_name, version, changes, recipe, extra))
    # every value the JSON holds is in the config (the actor's goal is the planner's subgoal, as in robomimic)
    got = dict(leaves(to_plain(cfg)))
    for k, v in leaves(edited(algo_name, version, changes)):
        if v != {} and not k.startswith("observation.actor.modalities.goal.") and k in got:
            assert got[k] == v, k


@pytest.mark.parametrize("case", [7, 17, 18, 19, 20], ids=lambda i: f"{CASES[i][3]}-{i}")
def test_export_composes_back_to_the_same_config(case, tmp_path):
    algo_name, version, changes, recipe, _ = CASES[case]
    cfg = compose_json(write(tmp_path, edited(algo_name, version, changes)))
    out, left = to_robomimic(cfg)
    assert set(left) <= {"experiment.rollout.at_end"}  # the only modmimic key off robomimic's behaviour here
    assert set(out) == {"algo_name", "experiment", "train", "algo", "observation", "meta"}
    again = compose_json(write(tmp_path, json.loads(json.dumps(out)), "again.json"),
                         ["experiment.rollout.at_end=" + str(cfg.experiment.rollout.at_end).lower()])
    assert to_plain(again) == to_plain(cfg)


def test_robomimic_defaults_match_modmimic_base_recipes():
    """robomimic's default config of each algo name and modmimic's base recipe differ only where documented."""
    allowed = {"train.output_dir", "train.hdf5_load_next_obs", "observation.actor.modalities.goal.low_dim",
               "experiment.rollout.enabled", "train.seq_length", "algo.vae.enabled"}
    for name in ("bc", "bcq", "cql", "iql", "td3_bc", "hbc", "iris", "diffusion_policy"):
        ref = dict(leaves(recipe_defaults(name)))
        diff = {k for k, v in leaves(config(name)) if k in ref and ref[k] != v and v != {}}
        assert diff <= allowed, (name, diff - allowed)


def test_command_line_overrides_and_dataset_win(tmp_path, reach_hdf5):
    cfg = config("bc", "0.5")
    cfg["train"]["data"] = [{"path": "a.hdf5", "weight": 2.0}, {"path": "b.hdf5", "filter_key": "train"}]
    path = write(tmp_path, cfg)
    assert to_plain(compose_json(path).train.data) == cfg["train"]["data"]
    args = expand_args([f"config={path}", f"train.data={reach_hdf5}", "train.batch_size=7"])
    assert args[0] == "recipe=bc" and f"train.data={reach_hdf5}" in args
    assert not any(a.startswith("train.data=[") or a == "train.batch_size=100" for a in args)
    got = compose(args[0].split("=", 1)[1], args[1:])
    assert got.train.data == str(reach_hdf5) and got.train.batch_size == 7


def test_strings_reach_the_config_exactly(tmp_path):
    cfg = config("bc", "0.5")
    cfg["experiment"]["name"] = "it's a \\ test, (1) été"
    cfg["train"]["data"] = "data dir/x,y=1 'q'\\.hdf5"
    cfg["train"]["action_config"] = {"actions": {"normalization": "min_max"}, "action/eef": {"normalization": None}}
    got = compose_json(write(tmp_path, cfg))
    assert got.experiment.name == cfg["experiment"]["name"] and got.train.data == cfg["train"]["data"]
    assert to_plain(got.train.action_config) == cfg["train"]["action_config"]


def test_cfg_job_prints_the_translated_config(tmp_path, capsys):
    path = write(tmp_path, edited("bc", "0.5", {"algo.rnn.enabled": True, "train.seq_length": 10,
                                                "algo.rnn.hidden_dim": 37}))
    assert main([f"config={path}", "--cfg", "job"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["recipe_name"] == "bc_rnn" and printed["algo"]["rnn"]["hidden_dim"] == 37


@pytest.mark.parametrize("changes,expected", [
    ({"algo_name": "dagger"}, "unknown algo_name 'dagger'"),
    ({"algo.rnn.dropout_between_layers": 0.1}, "algo.rnn.dropout_between_layers"),
    ({"train.shuffled_obs_key_groups": [["a", "b"]]}, "train.shuffled_obs_key_groups"),
    ({"experiment.rollout.batched": True}, "experiment.rollout.batched"),
    ({"observation.encoder.rgb.core_kwargs.backbone_kwargs.pretrained_path": "x"}, "pretrained_path"),
    ({"algo.gaussian.enabled": True, "algo.rnn.enabled": True}, "BC-Gaussian has no RNN"),
    ({"experiment.name": "${oc.env:HOME}"}, "interpolation"),
    ({"algo.fn": "os.system"}, "names code"),
    ({"experiment.mse": {"enabled": True}}, "experiment.mse"),
    ({"algo.optim_params.policy.learning_rate.num_cycles": 2.0}, "num_cycles"),
    ({"train.batch_size": "many"}, "train.batch_size"),
    ({"robomimic_version": "0.5"}, "robomimic_version"),
])
def test_unsupported_json_is_exit_2_naming_the_key(changes, expected, tmp_path, capsys):
    cfg = config("bc", "0.5")
    for k, v in changes.items():
        if k == "algo_name" or "." not in k:
            cfg[k] = v
        else:
            set_key(cfg, k, v)
    path = write(tmp_path, cfg)
    assert main([f"config={path}", "--cfg", "job"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "configuration error" in err and len(err.strip().splitlines()) == 1


def test_bad_files_are_exit_2(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "deep.json").write_text("[" * 200 + "]" * 200)
    os.symlink(tmp_path / "list.json", tmp_path / "link.json")
    for name, says in [("bad.json", "not valid JSON"), ("list.json", "JSON object"), ("deep.json", "nested"),
                       ("link.json", "symbolic link"), ("missing.json", "cannot be read")]:
        assert main([f"config={tmp_path / name}"]) == 2
        assert says in capsys.readouterr().err
    path = write(tmp_path, config("bc"))
    assert main([f"config={path}", "recipe=bc_rnn"]) == 2
    assert "drop recipe=" in capsys.readouterr().err


def test_iris_latent_subgoal_and_hbc_actor_goal(tmp_path):
    with pytest.raises(ConfigError, match="latent_subgoal.enabled"):
        compose_json(write(tmp_path, edited("iris", "0.5", {"algo.latent_subgoal.enabled": True})))
    with pytest.raises(ConfigError, match="the actor's goal is the planner's subgoal"):
        compose_json(write(tmp_path, edited("hbc", "0.5", {"observation.actor.modalities.goal.low_dim": ["x"]})))


# --- one training step per family --------------------------------------------------------------------------------

def tiny_json(algo_name: str, changes: dict, tiny, recipe: str, obs: list[str]) -> dict:
    """A robomimic config edited as a user would: tiny networks, the reach dataset's keys, one short epoch."""
    cfg = edited(algo_name, "0.5", changes)
    for o in tiny(recipe):
        k, v = o.split("=", 1)
        if k.startswith("algo."):
            set_key(cfg, k, yaml.safe_load(v))
    groups = {"hbc": ["planner", "actor"], "iris": ["value_planner.planner", "value_planner.value", "actor"]}
    for g in groups.get(algo_name, [""]):
        prefix = f"observation.{g}." if g else "observation."
        set_key(cfg, prefix + "modalities.obs.low_dim", obs)
        if g.endswith("planner"):
            set_key(cfg, prefix + "modalities.subgoal.low_dim", obs)
    for k, v in {"train.num_epochs": 1, "experiment.epoch_every_n_steps": 2, "train.batch_size": 4,
                 "experiment.rollout.enabled": False, "experiment.validation_epoch_every_n_steps": 1,
                 "experiment.logging.log_tb": False, "experiment.save.every_n_epochs": 1}.items():
        set_key(cfg, k, v)
    return cfg


TRAIN = [
    ("bc", {"algo.rnn.enabled": True, "algo.gmm.enabled": True, "train.seq_length": 4, "algo.rnn.horizon": 4},
     "bc_rnn_gmm"),
    pytest.param("bc", {"algo.vae.enabled": True, "algo.vae.prior.learn": True, "algo.vae.prior.use_gmm": True},
                 "bc_vae", marks=pytest.mark.slow),
    pytest.param("bc", {"algo.transformer.enabled": True, "train.frame_stack": 3,
                        "algo.transformer.context_length": 3}, "bc_transformer", marks=pytest.mark.slow),
    ("bcq", {"algo.critic.distributional.enabled": True, "algo.critic.value_bounds": [0.0, 1.0]},
     "bcq_distributional"),
    ("cql", {}, "cql"),
    ("iql", {}, "iql"),
    ("td3_bc", {"observation.modalities.obs.low_dim": LOW_DIM}, "td3_bc"),
    ("hbc", {"train.seq_length": 4, "algo.planner.subgoal_horizon": 4, "algo.actor.rnn.horizon": 4}, "hbc"),
    ("iris", {"train.seq_length": 4, "algo.value_planner.planner.subgoal_horizon": 4, "algo.actor.rnn.horizon": 4},
     "iris"),
    ("diffusion_policy", {"train.seq_length": 4, "train.frame_stack": 2, "algo.horizon.prediction_horizon": 4,
                          "algo.horizon.action_horizon": 2, "algo.ddpm.num_train_timesteps": 5,
                          "algo.ddpm.num_inference_timesteps": 5,
                          "algo.optim_params.policy.learning_rate.warmup_steps": 1}, "diffusion_policy"),
]


@pytest.mark.parametrize("algo_name,changes,recipe", TRAIN,
                         ids=[(t.values if hasattr(t, "values") else t)[2] for t in TRAIN])
def test_each_family_trains_from_its_json(algo_name, changes, recipe, reach_hdf5, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_json(algo_name, changes, tiny, recipe, ["pos", "goal_pos", "vel"])
    cfg["train"]["data"] = [{"path": str(reach_hdf5)}]
    cfg["train"]["output_dir"] = str(tmp_path / "runs")
    path = write(tmp_path, cfg)
    assert compose_json(path).recipe_name == recipe
    assert main([f"config={path}"]) == 0
    run = next((tmp_path / "runs" / "test").iterdir())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["recipe_name"] == recipe and saved["train"]["data"] == [{"path": str(reach_hdf5)}]
    assert (run / "models" / "last.pth").is_file()


@pytest.fixture(scope="module")
def camera_hdf5(tmp_path_factory):
    from modmimic.data.synthetic import write_image_dataset

    path = str(tmp_path_factory.mktemp("cam") / "cam.hdf5")
    write_image_dataset(path, n_demos=3, demo_len=6, cameras=("agentview",), size=32,
                        low_dim={"robot0_eef_pos": 3}, action_dim=2)
    return path


def test_image_json_trains_with_resnet18_spatial_softmax_crop(camera_hdf5, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_json("bc", {"algo.rnn.enabled": True, "train.seq_length": 2, "algo.rnn.horizon": 2,
                           "train.hdf5_load_next_obs": False,
                           "observation.modalities.obs.rgb": ["agentview_image"],
                           "observation.encoder.rgb.core_kwargs": {
                               "feature_dimension": 8, "backbone_class": "ResNet18Conv",
                               "backbone_kwargs": {"pretrained": False, "input_coord_conv": False},
                               "pool_class": "SpatialSoftmax",
                               "pool_kwargs": {"num_kp": 4, "learnable_temperature": False, "temperature": 1.0,
                                               "noise_std": 0.0}},
                           "observation.encoder.rgb.obs_randomizer_class": "CropRandomizer",
                           "observation.encoder.rgb.obs_randomizer_kwargs": {"crop_height": 28, "crop_width": 28,
                                                                            "num_crops": 1, "pos_enc": False}},
                    tiny, "bc_rnn", ["robot0_eef_pos"])
    cfg["train"].update(data=camera_hdf5, output_dir=str(tmp_path / "runs"), batch_size=2)
    cfg["experiment"]["epoch_every_n_steps"] = 1
    path = write(tmp_path, cfg)
    assert main([f"config={path}"]) == 0
    run = next((tmp_path / "runs" / "test").iterdir())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    rgb = saved["observation"]["encoder"]["rgb"]
    assert rgb["core_kwargs"]["backbone_class"] == "ResNet18Conv" and rgb["obs_randomizer_class"] == "CropRandomizer"


# --- export ------------------------------------------------------------------------------------------------------

def test_recipe_export_robomimic_cli(tmp_path, capsys):
    from modmimic.recipe import main as recipe_main

    out = tmp_path / "bc_rnn.json"
    assert recipe_main(["export", "bc_rnn", "--robomimic", "-o", str(out), "algo.rnn.hidden_dim=50"]) == 0
    data = json.loads(out.read_text())
    assert data["algo_name"] == "bc" and data["algo"]["rnn"] == {**config("bc")["algo"]["rnn"], "enabled": True,
                                                                  "hidden_dim": 50}
    assert set(data) == {"algo_name", "experiment", "train", "algo", "observation", "meta"}
    assert "at_end" not in data["experiment"]["rollout"] and "compile" not in data["train"]
    assert "experiment.rollout.at_end" in capsys.readouterr().err  # named as left out (robomimic has no such key)
    assert to_plain(compose_json(str(out), ["experiment.rollout.at_end=true"])) == \
        to_plain(compose("bc_rnn", ["algo.rnn.hidden_dim=50"]))
    assert recipe_main(["export", "bc_rnn", "--robomimic", "-o", str(out)]) == 2  # never replaces a file
    assert "exists" in capsys.readouterr().err
    assert recipe_main(["export", "bc_rnn", "--robomimic"]) == 0  # to stdout
    assert json.loads(capsys.readouterr().out)["algo_name"] == "bc"
