"""Every offline-RL recipe through the command line (``python -m modmimic.train``): train a few epochs on the chain
dataset, save, reload the checkpoint as a policy, act; a reward-less dataset is refused with a non-zero exit."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from modmimic.data.synthetic import chain_obs, make_chain_dataset, write_robomimic_hdf5
from modmimic.policy import policy_from_checkpoint
from modmimic.train import main

RL_RECIPES = ["iql", "td3_bc", "cql", "bcq", "bcq_gmm", "bcq_distributional"]
TINY = ["train.num_epochs=2", "experiment.epoch_every_n_steps=3", "train.batch_size=16",
        "observation.modalities.obs.low_dim=[state]", "experiment.rollout.enabled=false",
        "experiment.save.every_n_epochs=1", "train.output_dir=out", "algo.critic.layer_dims=[16]"]
SMALL = {"iql": ["algo.actor.layer_dims=[16]"], "td3_bc": ["algo.actor.layer_dims=[16]"],
         "cql": ["algo.actor.layer_dims=[16]"],
         "bcq": ["algo.action_sampler.vae.encoder_layer_dims=[16]", "algo.action_sampler.vae.decoder_layer_dims=[16]",
                 "algo.critic.num_action_samples_rollout=8"],
         "bcq_gmm": ["algo.action_sampler.actor_layer_dims=[16]", "algo.critic.num_action_samples_rollout=8"],
         "bcq_distributional": ["algo.action_sampler.vae.encoder_layer_dims=[16]",
                                "algo.action_sampler.vae.decoder_layer_dims=[16]", "algo.critic.value_bounds=[0,1]"]}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    path = tmp_path_factory.mktemp("chain") / "chain.hdf5"
    make_chain_dataset(str(path), n_episodes=40, seed=0)
    return path


def only_run(out):
    (name,) = os.listdir(out)
    (run,) = os.listdir(os.path.join(out, name))
    return os.path.join(out, name, run)


@pytest.mark.parametrize("recipe", RL_RECIPES)
def test_cli_trains_saves_reloads_and_acts(recipe, chain, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = torch.get_num_threads()
    try:
        rc = main([f"recipe={recipe}", f"dataset={chain}", *TINY, *SMALL[recipe]])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    run = only_run(tmp_path / "out")
    models = os.listdir(os.path.join(run, "models"))
    assert {"last.pth", "model_epoch_1.pth", "model_epoch_2.pth"} <= set(models)
    policy, ckpt = policy_from_checkpoint(ckpt_path=os.path.join(run, "models", "last.pth"))
    assert ckpt["recipe_name"] == recipe and ckpt["variable_state"]["epoch"] == 2
    policy.start_episode(4)
    act = policy({"state": chain_obs(np.arange(4))}, batched_ob=True)
    assert act.shape == (4, 1) and np.isfinite(act).all() and (np.abs(act) <= 1).all()


def test_cli_refuses_a_dataset_without_rewards(tmp_path):
    path = tmp_path / "bc_only.hdf5"
    rng = np.random.default_rng(0)
    write_robomimic_hdf5(str(path), [{"obs": {"state": rng.normal(size=(8, 5))},
                                      "next_obs": {"state": rng.normal(size=(8, 5))},
                                      "actions": rng.uniform(-1, 1, (8, 1))} for _ in range(3)])
    r = subprocess.run([sys.executable, "-m", "modmimic.train", "recipe=iql", f"dataset={path}", *TINY],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "recipe 'iql' is offline RL and needs rewards and dones" in r.stderr + r.stdout
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")
