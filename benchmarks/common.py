"""Timing shared by the benchmarks: interleaved rounds and per-round ratios against a bare-PyTorch step."""
from __future__ import annotations

import json
import statistics
import time

# Lift-like low-dim observation keys and sizes of the synthetic benchmark datasets
OBS = {"object": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}
ACT = 7


def timed(step, n: int) -> float:
    """Seconds per call of ``step`` over ``n`` calls."""
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def compare(name: str, variants: list, steps: int, repeats: int, threads: int) -> list[dict]:
    """``variants``: ``[(workload, step fn), ...]`` with the bare eager PyTorch step last. Rounds interleave the
    variants (A B C A B C ...); a round's ratio is bare time / variant time in that round, and the reported ratio
    is the median over rounds (pairing neighbouring measurements cancels most of the drift of a shared machine's
    load; 1.0 = no framework tax, > 1 = faster than bare eager), ``ratio_range`` the lowest and highest round's.
    Prints and returns one record per variant."""
    for _, s in variants:  # warm-up
        for _ in range(3):
            s()
    times = {w: [] for w, _ in variants}
    for _ in range(repeats):
        for w, s in variants:
            times[w].append(timed(s, steps))
    bare = times[variants[-1][0]]
    out = []
    for w, _ in variants:
        t = statistics.median(times[w])
        ratios = [b / v for b, v in zip(bare, times[w])]
        rec = {"workload": f"{w}/{name}", "steps_per_s": round(1 / t, 2), "ms_per_step": round(t * 1e3, 3),
               "ratio_vs_torch": round(statistics.median(ratios), 4),
               "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)], "rounds": repeats, "threads": threads}
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


def modmimic_setup(store, recipe: str, batch_size: int, overrides=(), seed: int = 0):
    """``(step, algo)``: one modmimic training step as the training loop runs it (sample windows, process the
    batch, ``train_on_batch``; the step's log values stay on the device, as the loop reads them once per epoch) for
    ``recipe`` on ``store``."""
    from modmimic.algo import algo_factory
    from modmimic.config import compose
    from modmimic.data.sampler import WindowSampler

    cfg = compose(recipe, [f"observation.modalities.obs.low_dim=[{','.join(OBS)}]", f"train.batch_size={batch_size}",
                           "train.hdf5_normalize_obs=false", *overrides])
    sampler = WindowSampler(store, batch_size, seq_length=cfg.train.seq_length, frame_stack=cfg.train.frame_stack,
                            seed=seed)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim)
    algo.set_train()

    def step():
        return algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)["Loss"]

    return step, algo


def make_dataset(path: str, n_demos: int = 200, seed: int = 0) -> None:
    """A robomimic-format file of ``n_demos`` random demos (120-179 steps) with the ``OBS`` keys, next observations,
    7-D actions, sparse random rewards and a done at each demo's end."""
    import numpy as np

    from modmimic.data.synthetic import write_robomimic_hdf5

    rng = np.random.default_rng(seed)
    demos = []
    for _ in range(n_demos):
        T = int(rng.integers(120, 180))
        obs = {k: rng.normal(size=(T, d)) for k, d in OBS.items()}
        nxt = {k: np.concatenate([v[1:], v[-1:]]) for k, v in obs.items()}
        dones = np.zeros(T)
        dones[-1] = 1
        demos.append({"obs": obs, "next_obs": nxt, "actions": rng.uniform(-0.99, 0.99, (T, ACT)),
                      "rewards": (rng.random(T) < 0.05).astype(float), "dones": dones})
    write_robomimic_hdf5(path, demos)
