"""Self-describing checkpoints, ``RolloutPolicy`` and ``policy_from_checkpoint``.

A checkpoint (``torch.save`` of a dict, written atomically) holds everything needed to rebuild and run a policy:

    format / format_version       "modmimic-checkpoint", 1
    versions                      modmimic, torch, tensordict, python
    algo_name, recipe_name
    config                        the resolved config (plain dict)
    shape_metadata                {ac_dim, all_shapes, all_obs_keys, action_keys}
    env_metadata                  the dataset's env_args
    obs_normalization_stats       {key: {offset, scale}} as nested lists, or None
    action_normalization_stats    {action key: {offset, scale}} as nested lists, or None
    model                         Algo.serialize()
    variable_state                training counters (epoch, best scores, ...), set by the trainer
    trainer_state                 optional: sampler / RNG states for bit-exact resume
"""
from __future__ import annotations

import platform

import numpy as np
import torch
from omegaconf import OmegaConf

import modmimic
from modmimic.algo import Algo, algo_factory
from modmimic.config import ConfigError, config_factory
from modmimic.data.stats import stats_from_lists, stats_to_lists
from modmimic.io import atomic_torch_save

FORMAT = "modmimic-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a (compatible) modmimic checkpoint."""


def versions() -> dict:
    import tensordict

    return {"modmimic": modmimic.__version__, "torch": torch.__version__, "tensordict": tensordict.__version__,
            "python": platform.python_version()}


def make_checkpoint(algo: Algo, obs_normalization_stats=None, action_normalization_stats=None, env_meta=None,
                    variable_state=None, trainer_state=None, action_keys=None) -> dict:
    cfg = OmegaConf.to_container(algo.config, resolve=True)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(),
        "algo_name": algo.algo_name, "recipe_name": algo.recipe_name, "config": cfg,
        "shape_metadata": {"ac_dim": algo.ac_dim, "all_shapes": {k: list(v) for k, v in algo.obs_key_shapes.items()},
                           "all_obs_keys": sorted(algo.obs_key_shapes),
                           "action_keys": list(action_keys or cfg["train"]["action_keys"])},
        "env_metadata": env_meta or {},
        "obs_normalization_stats": stats_to_lists(obs_normalization_stats),
        "action_normalization_stats": stats_to_lists(action_normalization_stats),
        "model": algo.serialize(),
        "variable_state": variable_state or {},
        "trainer_state": trainer_state,
    }


def save_checkpoint(path: str, ckpt: dict) -> None:
    atomic_torch_save(ckpt, path)


def load_checkpoint(path_or_dict) -> dict:
    if isinstance(path_or_dict, dict):
        ckpt = path_or_dict
    else:
        try:
            ckpt = torch.load(path_or_dict, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint not found: {path_or_dict}") from None
        except Exception as e:  # truncated / not a torch file
            raise CheckpointError(f"cannot read checkpoint {path_or_dict}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path_or_dict if not isinstance(path_or_dict, dict) else 'dict'} is not a modmimic "
                              "checkpoint (no 'format': 'modmimic-checkpoint' entry)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {ckpt['format_version']} is newer than this modmimic "
                              f"({FORMAT_VERSION}); upgrade modmimic")
    return ckpt


def algo_from_checkpoint(ckpt, device="cpu", load_optimizers: bool = False) -> Algo:
    ckpt = load_checkpoint(ckpt)
    config = config_factory(ckpt["algo_name"], ckpt["config"])
    sm = ckpt["shape_metadata"]
    algo = algo_factory(ckpt["algo_name"], config, {k: tuple(v) for k, v in sm["all_shapes"].items()},
                        sm["ac_dim"], device)
    algo.deserialize(ckpt["model"], load_optimizers=load_optimizers)
    return algo


class RolloutPolicy:
    """Wraps an :class:`Algo` for environment interaction (robomimic ``RolloutPolicy``).

    ``__call__(ob, goal=None, batched_ob=False)`` takes a numpy observation dict (one environment, or a batch of
    environments with ``batched_ob=True``), normalizes it with the training statistics, asks the algorithm's acting
    path and returns numpy actions, un-normalized per action key. Per-environment state (RNN hidden state,
    observation context, subgoal) lives in the acting path: ``start_episode(n)`` resets all ``n`` environments,
    ``reset_envs(done_mask)`` only those that start a new episode.
    """

    def __init__(self, policy: Algo, obs_normalization_stats=None, action_normalization_stats=None,
                 action_keys=None):
        self.policy = policy
        self.obs_normalization_stats = obs_normalization_stats
        self.action_normalization_stats = action_normalization_stats
        self.action_keys = list(action_keys or (list(action_normalization_stats) if action_normalization_stats else []))
        self._affine = None
        if action_normalization_stats:
            off = np.concatenate([np.asarray(action_normalization_stats[k]["offset"]).reshape(-1)
                                  for k in self.action_keys])
            sc = np.concatenate([np.asarray(action_normalization_stats[k]["scale"]).reshape(-1)
                                 for k in self.action_keys])
            self._affine = (off.astype(np.float32), sc.astype(np.float32))
        self.num_envs = 1

    def start_episode(self, num_envs: int = 1) -> None:
        self.num_envs = num_envs
        self.policy.set_eval()
        self.policy.reset(num_envs)

    def reset_envs(self, done) -> None:
        self.policy.reset(self.num_envs, torch.as_tensor(np.asarray(done, dtype=bool)))

    def _prepare(self, ob: dict, batched: bool, keys: dict) -> dict:
        out = {}
        for k in keys:
            if k not in ob:
                raise KeyError(f"observation has no key {k!r} that the policy needs (has: {sorted(ob)})")
            v = np.asarray(ob[k], dtype=np.float32)
            if not batched:
                v = v[None]
            st = (self.obs_normalization_stats or {}).get(k)
            if st is not None:
                v = (v - np.asarray(st["offset"], np.float32).reshape(-1)) / np.asarray(st["scale"], np.float32).reshape(-1)
            out[k] = torch.from_numpy(v).to(self.policy.device)
        return out

    def __call__(self, ob: dict, goal: dict | None = None, batched_ob: bool = False) -> np.ndarray:
        obs = self._prepare(ob, batched_ob, self.policy.obs_shapes)
        g = self._prepare(goal, batched_ob, self.policy.goal_shapes) if goal is not None and self.policy.goal_shapes else None
        a = self.policy.get_action(obs, g).detach().cpu().numpy()
        if self._affine is not None:
            a = a * self._affine[1] + self._affine[0]
        return a if batched_ob else a[0]

    def __repr__(self) -> str:
        return f"RolloutPolicy({self.policy.recipe_name})"


def policy_from_checkpoint(device="cpu", ckpt_path=None, ckpt_dict=None, verbose: bool = False):
    """``(RolloutPolicy, checkpoint dict)`` from a checkpoint path or dict (robomimic's signature)."""
    ckpt = load_checkpoint(ckpt_dict if ckpt_dict is not None else ckpt_path)
    algo = algo_from_checkpoint(ckpt, device)
    algo.set_eval()
    policy = RolloutPolicy(algo, stats_from_lists(ckpt.get("obs_normalization_stats")),
                           stats_from_lists(ckpt.get("action_normalization_stats")),
                           ckpt["shape_metadata"].get("action_keys"))
    if verbose:
        print(algo)
    return policy, ckpt
