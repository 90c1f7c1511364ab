"""robomimic experiment configs as its ``Config`` classes lay them out (``config.dump()``), built here section by
section the way robomimic's ``BaseConfig`` builds them (``experiment_config``, ``train_config``, ``algo_config``,
``observation_config``, ``meta_config``) with each algorithm config's ``algo_config``/``train_config`` changes, for
robomimic 0.3 and 0.5 (0.5 added ``env_meta_update_dict``, ``ckpt_path``, ``normalize_weights_by_ds_size``,
``action_keys``, ``action_config`` and ``max_grad_norm``). Values are robomimic's defaults; robomimic is not
installable beside this torch, so the tests build its layout from this description."""
from __future__ import annotations

import copy

LOW_DIM = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]


def modalities(obs=LOW_DIM, goal=(), subgoal=None) -> dict:
    out = {"obs": {"low_dim": list(obs), "rgb": [], "depth": [], "scan": []},
           "goal": {"low_dim": list(goal), "rgb": [], "depth": [], "scan": []}}
    if subgoal is not None:
        out["subgoal"] = {"low_dim": list(subgoal), "rgb": [], "depth": [], "scan": []}
    return out


def encoder() -> dict:
    """``observation.encoder``: kwargs bags empty (the classes' defaults) as robomimic's config classes leave them."""
    visual = {"core_class": "VisualCore", "core_kwargs": {}, "obs_randomizer_class": None, "obs_randomizer_kwargs": {}}
    return {"low_dim": {"core_class": None, "core_kwargs": {}, "obs_randomizer_class": None,
                        "obs_randomizer_kwargs": {}},
            "rgb": dict(visual), "depth": copy.deepcopy(visual),
            "scan": {**copy.deepcopy(visual), "core_class": "ScanCore"}}


def observation(**mods) -> dict:
    return {"modalities": modalities(**mods), "encoder": encoder()}


def experiment(version: str) -> dict:
    e = {"name": "test", "validate": False,
         "logging": {"terminal_output_to_txt": True, "log_tb": True, "log_wandb": False, "wandb_proj_name": "debug"},
         "save": {"enabled": True, "every_n_seconds": None, "every_n_epochs": 50, "epochs": [],
                  "on_best_validation": False, "on_best_rollout_return": False,
                  "on_best_rollout_success_rate": True},
         "epoch_every_n_steps": 100, "validation_epoch_every_n_steps": 10, "env": None, "additional_envs": None,
         "render": False, "render_video": True, "keep_all_videos": False, "video_skip": 5,
         "rollout": {"enabled": True, "n": 50, "horizon": 400, "rate": 50, "warmstart": 0,
                     "terminate_on_success": True}}
    if version == "0.5":
        e.update(env_meta_update_dict={}, ckpt_path=None)
    return e


def train(algo_name: str, version: str) -> dict:
    t = {"data": None, "output_dir": f"../{algo_name}_trained_models", "num_data_workers": 0,
         "hdf5_cache_mode": "all", "hdf5_use_swmr": True, "hdf5_load_next_obs": True, "hdf5_normalize_obs": False,
         "hdf5_filter_key": None, "hdf5_validation_filter_key": None, "seq_length": 1, "pad_seq_length": True,
         "frame_stack": 1, "pad_frame_stack": True, "dataset_keys": ["actions", "rewards", "dones"],
         "goal_mode": None, "cuda": True, "batch_size": 100, "num_epochs": 2000, "seed": 1}
    if version == "0.5":
        t.update(normalize_weights_by_ds_size=False, action_keys=["actions"],
                 action_config={"actions": {"normalization": None}}, max_grad_norm=None)
    return t


def lr(initial: float, decay: float = 0.1, **extra) -> dict:
    return {"initial": initial, "decay_factor": decay, "epoch_schedule": [], **extra}


def optim(initial: float, decay: float = 0.1, start_end: bool = False, **extra) -> dict:
    o = {"learning_rate": lr(initial, decay, **extra), "regularization": {"L2": 0.0}}
    if start_end:
        o.update(start_epoch=-1, end_epoch=-1)
    return o


def vae(latent_dim: int = 14) -> dict:
    return {"enabled": False, "latent_dim": latent_dim, "latent_clip": None, "kl_weight": 1.0,
            "decoder": {"is_conditioned": True, "reconstruction_sum_across_elements": False},
            "prior": {"learn": False, "is_conditioned": False, "use_gmm": False, "gmm_num_modes": 10,
                      "gmm_learn_weights": False, "use_categorical": False, "categorical_dim": 10,
                      "categorical_gumbel_softmax_hard": False, "categorical_init_temp": 1.0,
                      "categorical_temp_anneal_step": 0.001, "categorical_min_temp": 0.3},
            "encoder_layer_dims": [300, 400], "decoder_layer_dims": [300, 400], "prior_layer_dims": [300, 400]}


def gmm() -> dict:
    return {"enabled": False, "num_modes": 5, "min_std": 0.0001, "std_activation": "softplus", "low_noise_eval": True}


def bc_algo(version: str) -> dict:
    """``BCConfig.algo_config``."""
    tr = {"enabled": False, "context_length": 10, "embed_dim": 512, "num_layers": 6, "num_heads": 8,
          "emb_dropout": 0.1, "attn_dropout": 0.1, "block_output_dropout": 0.1, "sinusoidal_embedding": False,
          "activation": "gelu", "supervise_all_steps": False, "nn_parameter_for_timesteps": True}
    if version == "0.5":
        tr["pred_future_acs"] = False
    return {"optim_params": {"policy": {"optimizer_type": "adam",
                                        "learning_rate": lr(1e-4, scheduler_type="multistep"),
                                        "regularization": {"L2": 0.0}}},
            "loss": {"l2_weight": 1.0, "l1_weight": 0.0, "cos_weight": 0.0},
            "actor_layer_dims": [1024, 1024],
            "gaussian": {"enabled": False, "fixed_std": False, "init_std": 0.1, "min_std": 0.01,
                         "std_activation": "softplus", "low_noise_eval": True},
            "gmm": gmm(), "vae": vae(),
            "rnn": {"enabled": False, "horizon": 10, "hidden_dim": 400, "rnn_type": "LSTM", "num_layers": 2,
                    "open_loop": False, "kwargs": {"bidirectional": False}},
            "transformer": tr}


def bcq_algo() -> dict:
    """``BCQConfig.algo_config``: the action sampler is BC's algo section pruned to its VAE (on) and GMM."""
    sampler_vae = vae()
    sampler_vae["enabled"] = True
    return {"optim_params": {n: optim(1e-3, start_end=True) for n in ("critic", "action_sampler", "actor")},
            "discount": 0.99, "n_step": 1, "target_tau": 0.005, "infinite_horizon": False,
            "critic": {"use_huber": False, "max_gradient_norm": None, "value_bounds": None, "num_action_samples": 10,
                       "num_action_samples_rollout": 100, "ensemble": {"n": 2, "weight": 0.75},
                       "distributional": {"enabled": False, "num_atoms": 51}, "layer_dims": [300, 400]},
            "action_sampler": {"actor_layer_dims": [1024, 1024], "gmm": gmm(), "vae": sampler_vae,
                               "freeze_encoder_epoch": -1},
            "actor": {"enabled": False, "perturbation_scale": 0.05, "layer_dims": [300, 400]}}


def cql_algo() -> dict:
    return {"optim_params": {"critic": optim(1e-3, 0.0), "actor": optim(3e-4, 0.0)},
            "discount": 0.99, "n_step": 1, "target_tau": 0.005,
            "actor": {"bc_start_steps": 0, "target_entropy": "default", "max_gradient_norm": None,
                      "net": {"type": "gaussian", "common": {"std_activation": "exp", "use_tanh": True,
                                                             "low_noise_eval": True},
                              "gaussian": {"init_last_fc_weight": 0.001, "init_std": 0.3, "fixed_std": False}},
                      "layer_dims": [300, 400]},
            "critic": {"use_huber": False, "max_gradient_norm": None, "value_bounds": None, "num_action_samples": 1,
                       "cql_weight": 1.0, "deterministic_backup": True, "min_q_weight": 1.0, "target_q_gap": 5.0,
                       "num_random_actions": 10, "ensemble": {"n": 2}, "layer_dims": [300, 400]}}


def iql_algo() -> dict:
    return {"optim_params": {n: optim(1e-4, 0.0) for n in ("critic", "vf", "actor")},
            "discount": 0.99, "target_tau": 0.01,
            "actor": {"net": {"type": "gaussian",
                              "common": {"std_activation": "softplus", "low_noise_eval": True, "use_tanh": False},
                              "gaussian": {"init_last_fc_weight": 0.001, "init_std": 0.3, "fixed_std": False},
                              "gmm": {"num_modes": 5, "min_std": 0.0001}},
                      "layer_dims": [300, 400], "max_gradient_norm": None},
            "critic": {"ensemble": {"n": 2}, "layer_dims": [300, 400], "use_huber": False, "max_gradient_norm": None},
            "adv": {"clip_adv_value": None, "beta": 1.0, "use_final_clip": True}, "vf_quantile": 0.9}


def td3_bc_algo() -> dict:
    return {"optim_params": {n: optim(3e-4, start_end=True) for n in ("critic", "actor")},
            "alpha": 2.5, "discount": 0.99, "n_step": 1, "target_tau": 0.005, "infinite_horizon": False,
            "critic": {"use_huber": False, "max_gradient_norm": None, "value_bounds": None,
                       "ensemble": {"n": 2, "weight": 1.0}, "layer_dims": [256, 256]},
            "actor": {"update_freq": 2, "noise_std": 0.2, "noise_clip": 0.5, "layer_dims": [256, 256]}}


def gl_algo() -> dict:
    v = vae(16)
    v["enabled"] = True
    return {"optim_params": {"goal_network": optim(1e-4)}, "subgoal_horizon": 10,
            "ae": {"planner_layer_dims": [300, 400]}, "vae": v}


def hbc_actor(version: str) -> dict:
    """HBC's actor: BC's algo section without gaussian/gmm/vae, the RNN on."""
    a = bc_algo(version)
    for k in ("gaussian", "gmm", "vae"):
        del a[k]
    a["rnn"]["enabled"] = True
    return a


def dp_algo() -> dict:
    return {"optim_params": {"policy": {"optimizer_type": "adamw",
                                        "learning_rate": {"initial": 1e-4, "decay_factor": 0.1,
                                                          "step_every_batch": True, "scheduler_type": "cosine",
                                                          "num_cycles": 0.5, "warmup_steps": 500,
                                                          "epoch_schedule": []},
                                        "regularization": {"L2": 1e-6}}},
            "horizon": {"observation_horizon": 2, "action_horizon": 8, "prediction_horizon": 16},
            "unet": {"enabled": True, "diffusion_step_embed_dim": 256, "down_dims": [256, 512, 1024],
                     "kernel_size": 5, "n_groups": 8},
            "ema": {"enabled": True, "power": 0.75},
            "ddpm": {"enabled": True, "num_train_timesteps": 100, "num_inference_timesteps": 100,
                     "beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "prediction_type": "epsilon"},
            "ddim": {"enabled": False, "num_train_timesteps": 100, "num_inference_timesteps": 10,
                     "beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "set_alpha_to_one": True,
                     "steps_offset": 0, "prediction_type": "epsilon"}}


def config(algo_name: str, version: str = "0.5") -> dict:
    """The full default config of one robomimic algo name, as ``config_factory(algo_name).dump()`` lays it out."""
    exp, tr = experiment(version), train(algo_name, version)
    obs = observation()
    if algo_name == "bc":
        algo = bc_algo(version)
        tr["hdf5_load_next_obs"] = False
    elif algo_name == "bcq":
        algo = bcq_algo()
    elif algo_name == "cql":
        algo = cql_algo()
        tr["batch_size"] = 1024
    elif algo_name == "iql":
        algo = iql_algo()
    elif algo_name == "td3_bc":
        algo = td3_bc_algo()
        exp["save"].update(every_n_epochs=20, on_best_rollout_return=True, on_best_rollout_success_rate=False)
        exp.update(epoch_every_n_steps=5000, render_video=False)
        exp["rollout"].update(horizon=1000, rate=1)
        tr.update(hdf5_normalize_obs=True, batch_size=256, num_epochs=200)
        obs["modalities"]["obs"]["low_dim"] = ["flat"]
    elif algo_name == "gl":
        algo = gl_algo()
        exp["rollout"]["enabled"] = False
        tr["seq_length"] = 10
        obs["modalities"]["subgoal"] = modalities(subgoal=LOW_DIM)["subgoal"]
    elif algo_name == "hbc":
        algo = {"mode": "separate", "actor_use_random_subgoals": False, "subgoal_update_interval": 10,
                "latent_subgoal": {"enabled": False, "prior_correction": {"enabled": False, "num_samples": 100}},
                "planner": gl_algo(), "actor": hbc_actor(version)}
        tr["seq_length"] = 10
        obs = {"planner": observation(subgoal=LOW_DIM), "actor": observation()}
    elif algo_name == "iris":
        value = bcq_algo()
        algo = {"mode": "separate", "actor_use_random_subgoals": False, "subgoal_update_interval": 10,
                "latent_subgoal": {"enabled": False, "prior_correction": {"enabled": False, "num_samples": 100}},
                "value_planner": {"planner": gl_algo(), "value": value, "num_samples": 100},
                "actor": hbc_actor(version)}
        tr["seq_length"] = 10
        obs = {"value_planner": {"planner": observation(subgoal=LOW_DIM), "value": observation()},
               "actor": observation()}
    elif algo_name == "diffusion_policy":
        algo = dp_algo()
        tr.update(hdf5_load_next_obs=False, seq_length=16, frame_stack=2)
    else:
        raise KeyError(algo_name)
    return {"algo_name": algo_name, "experiment": exp, "train": tr, "algo": algo, "observation": obs,
            "meta": {"hp_base_config_file": None, "hp_keys": [], "hp_values": []}}


def set_key(cfg: dict, key: str, value) -> dict:
    """Set dotted ``key`` (creating sections, as robomimic's unlocked Config does)."""
    *parents, last = key.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg
