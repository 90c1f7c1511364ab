"""Tiny checkpoints for the deployment tests (export, server): a few training steps of each recipe on the reach
dataset (``tiny_overrides``), or on the image dataset of test_vision, with observation and action normalization."""
import torch

from conftest import tiny_overrides
from modmimic.algo import algo_factory
from modmimic.config import compose
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler
from modmimic.policy import make_checkpoint, save_checkpoint

KEYS = ["pos", "goal_pos", "vel"]
# small horizons so that chunks, RNN horizons and diffusion loops are exercised in a few steps
EXTRA = {"bc_rnn": ["train.seq_length=4", "algo.rnn.horizon=4"],
         "diffusion_policy": ["algo.horizon.prediction_horizon=8", "algo.horizon.action_horizon=4",
                              "algo.ddpm.num_train_timesteps=20", "algo.ddpm.num_inference_timesteps=5"],
         "act": ["algo.act.chunk_size=4"],
         "bc_transformer": ["algo.transformer.context_length=3", "train.frame_stack=3"]}


def train_checkpoint(path, data, recipe, steps=3, keys=KEYS, overrides=()):
    ov = (tiny_overrides(recipe) if keys == KEYS else [o for o in tiny_overrides(recipe)
                                                      if not o.startswith("observation.modalities.obs.low_dim")])
    cfg = compose(recipe, ov + EXTRA.get(recipe, []) + list(overrides))
    torch.manual_seed(0)
    store = load_episode_store(str(data), keys, load_next_obs=cfg.train.hdf5_load_next_obs)
    sampler = WindowSampler(store, 4, seq_length=cfg.train.seq_length, frame_stack=cfg.train.frame_stack, seed=0)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    algo.set_train()
    for _ in range(steps):
        algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)
    has_stats = {k: v for k, v in store.obs_normalization_stats().items() if len(store.obs_shapes()[k]) == 1} \
        if store.obs_normalization_stats() else None
    save_checkpoint(str(path), make_checkpoint(algo, env_meta=store.env_meta, obs_normalization_stats=has_stats,
                                               action_normalization_stats=store.action_normalization_stats()))
    return str(path)
