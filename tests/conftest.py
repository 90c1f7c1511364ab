"""Shared fixtures: a tiny generated reach dataset and overrides that make any recipe train in a blink."""
import os

# headless: MuJoCo picks its GL backend when first imported (any test module may import robosuite or Meta-World
# at collection), so choose EGL before anything else does, as modmimic.envs does
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

# numpy's OpenBLAS with one thread, set before numpy loads in any test process (xdist workers inherit it): its thread
# server is never started. A CI run hung 15 minutes in np.linalg.inv (a 3x3, matplotlib's transform, drawing
# curves.png) inside a worker; OpenBLAS's threaded server has known deadlocks after forks in the same process
# (OpenBLAS issues 5520, 294), and tiny numpy math on a 2-core machine running two workers gains nothing from threads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# tiny networks on a shared 2-core machine: one intra-op thread is several times faster than two
torch.set_num_threads(1)

# property tests draw the same examples on every run, so a CI run is not a lottery (a near-gimbal-lock rotation once
# failed one run and not the next); MODMIMIC_HYPOTHESIS_RANDOM=1 explores new examples locally
from hypothesis import settings as hypothesis_settings  # noqa: E402

hypothesis_settings.register_profile("modmimic", derandomize=not os.environ.get("MODMIMIC_HYPOTHESIS_RANDOM"))
hypothesis_settings.load_profile("modmimic")

from modmimic.data.synthetic import make_reach_dataset


@pytest.fixture(scope="session")
def reach_hdf5(tmp_path_factory):
    """12 demos of the point-reaching task (obs pos, goal_pos, vel; 2-D actions), mask/train (9) and mask/valid (3)."""
    path = tmp_path_factory.mktemp("data") / "reach.hdf5"
    make_reach_dataset(str(path), n_demos=12, dim=2, seed=0, max_len=20, valid_fraction=0.25, noise=0.05)
    return path


# values a recipe cannot default (its config documents that they must be set)
REQUIRED = {"bcq_distributional": ["algo.critic.value_bounds=[0.0,1.0]"],
            # two-phase recipes: the second phase starts within a few steps, so short runs (resume) cover both
            "vq_bet": ["algo.vqvae.train_steps=5"]}


def tiny_overrides(recipe: str) -> list[str]:
    """Overrides that shrink every network of ``recipe`` (layer lists -> [16], UNet levels -> [16, 32],
    hidden/embedding sizes -> 16, one layer, two heads) and observe the reach dataset's keys; generic so that later recipes get them too."""
    from omegaconf import DictConfig, ListConfig

    from modmimic.config import default_config

    cfg = default_config(recipe)
    out = ["observation.modalities.obs.low_dim=[pos,goal_pos,vel]", "experiment.rollout.enabled=false"]

    def walk(node, prefix):
        for k in node.keys():
            v = node._get_node(k)
            path = f"{prefix}{k}"
            if isinstance(v, DictConfig):
                if k not in ("optim_params",):
                    walk(v, path + ".")
            elif isinstance(v, ListConfig):
                if str(k).endswith("layer_dims") and len(v) > 0:
                    out.append(f"{path}=[16]")
                elif k == "down_dims":  # diffusion UNet levels (GroupNorm: multiples of n_groups=8)
                    out.append(f"{path}=[16,32]")
            elif k in ("hidden_dim", "embed_dim", "n_emb", "diffusion_step_embed_dim") and isinstance(v._value(), int):
                out.append(f"{path}=16")
            elif k in ("num_layers", "n_layer") and isinstance(v._value(), int):
                out.append(f"{path}=1")
            elif k in ("num_heads", "n_head") and isinstance(v._value(), int):
                out.append(f"{path}=2")

    walk(cfg.algo, "algo.")
    return out + REQUIRED.get(recipe, [])


@pytest.fixture
def tiny():
    return tiny_overrides


def build_from_reach(cfg, path, keys=("pos", "goal_pos", "vel"), seed=0):
    """``(store, sampler, algo)`` for a composed ``cfg`` on a reach dataset: the episode store of ``keys``, a window
    sampler of the config's batch, sequence and frame-stack sizes, and the algorithm, seeded."""
    from modmimic.algo import algo_factory
    from modmimic.data.hdf5 import load_episode_store
    from modmimic.data.sampler import WindowSampler

    torch.manual_seed(seed)
    store = load_episode_store(str(path), list(keys), load_next_obs=False)
    sampler = WindowSampler(store, cfg.train.batch_size, seq_length=cfg.train.seq_length,
                            frame_stack=cfg.train.frame_stack, seed=seed)
    return store, sampler, algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)


def checkpoint_round_trip(algo, store, tmp_path, keys=("pos", "goal_pos", "vel"), steps=5):
    """Save ``algo`` with the store's env metadata, reload it with ``policy_from_checkpoint`` and act the same seeded
    observations: ``(in-process actions, run, reloaded policy, checkpoint)``; ``run(policy)`` acts them again."""
    import numpy as np

    from modmimic.policy import RolloutPolicy, make_checkpoint, policy_from_checkpoint, save_checkpoint

    path = str(tmp_path / "ckpt.pth")
    save_checkpoint(path, make_checkpoint(algo, env_meta=store.env_meta))
    policy, ckpt = policy_from_checkpoint(ckpt_path=path)
    rng = np.random.default_rng(0)
    obs = [{k: rng.uniform(-1, 1, 2) for k in keys} for _ in range(steps)]

    def run(pol):
        torch.manual_seed(7)
        pol.start_episode()
        return np.stack([pol(o) for o in obs])

    return run(RolloutPolicy(algo)), run, policy, ckpt
