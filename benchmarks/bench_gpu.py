"""GPU training speed: per recipe (BC, BC-RNN, IQL, TD3-BC, CQL), steps/s of the modmimic step eager, compiled
(``train.compile``) and compiled + CUDA graphs (``train.cuda_graphs``), and each as a ratio to a bare eager PyTorch
loop of the same math on the same GPU (> 1: faster than bare eager). The modmimic step samples from the episode
store kept on the GPU (``train.store_on_device``); the bare loops index GPU tensors too.

    python benchmarks/bench_gpu.py [--only bc,bc_rnn,iql,td3_bc,cql] [--steps 50] [--repeats 10] [--amp]

Prints one JSON line per (variant, recipe) (see benchmarks/common.py: interleaved rounds, median per-round ratio);
GPU work is synchronised at the end of each timed block. Without CUDA it exits with status 2 and says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def cuda_timed(step, n: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def modmimic_gpu_step(store, recipe: str, batch_size: int, overrides=(), seed: int = 0):
    """One modmimic training step on ``cuda`` as the training loop runs it (log values stay on the device)."""
    from common import OBS

    from modmimic.algo import algo_factory
    from modmimic.config import compose
    from modmimic.data.sampler import WindowSampler

    cfg = compose(recipe, [f"observation.modalities.obs.low_dim=[{','.join(OBS)}]", f"train.batch_size={batch_size}",
                           "device=cuda", *overrides])
    sampler = WindowSampler(store, batch_size, seq_length=cfg.train.seq_length, frame_stack=cfg.train.frame_stack,
                            seed=seed, device="cuda").keep_on_device()
    torch.manual_seed(seed)
    algo = algo_factory(cfg.algo_name, cfg, store.obs_shapes(), store.ac_dim, "cuda")
    algo.check_finite = False  # no host sync per update (the training loop keeps it; here the step alone counts)
    algo.set_train()

    def step():
        return algo.train_on_batch(algo.process_batch_for_training(sampler.sample()), epoch=1)["Loss"]

    return step


class GPUData:
    """The bare offline-RL loops' data path (benchmarks/bench_offline_rl.py ``BareData``) on the GPU."""

    def __init__(self, store, batch_size, seed=0):
        from common import OBS

        from modmimic import keys as K

        flat = store.flat.cuda()
        col = lambda key: flat[:, store.columns[key][0]:store.columns[key][1]].contiguous()  # noqa: E731
        self.obs = torch.cat([col(K.obs(k)) for k in sorted(OBS)], -1)
        self.nobs = torch.cat([col(K.next_obs(k)) for k in sorted(OBS)], -1)
        self.act, self.rew, self.done = col(K.ACTION), col(K.REWARD), col(K.DONE) != 0
        self.g = torch.Generator(device="cuda").manual_seed(seed)
        self.n, self.B = flat.shape[0], batch_size

    def sample(self):
        i = torch.randint(self.n, (self.B,), generator=self.g, device="cuda")
        return self.obs[i], self.act[i], self.rew[i], self.done[i], self.nobs[i]


def bare_bc_gpu(store, seq_len, model, batch_size, seed=0):
    """benchmarks/bench_train_step.py ``bare_setup`` on the GPU: MSE regression on clamped windows."""
    import torch.nn.functional as F
    from common import OBS

    from modmimic import keys as K

    flat = store.flat.cuda()
    x_all = torch.cat([flat[:, store.columns[K.obs(k)][0]:store.columns[K.obs(k)][1]] for k in sorted(OBS)], -1)
    a0, a1, _ = store.columns[K.ACTION]
    act = flat[:, a0:a1].contiguous()
    ends = torch.repeat_interleave(store.offsets + store.lengths - 1, store.lengths).cuda()
    model = model.cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cuda").manual_seed(seed)
    n, ar = flat.shape[0], torch.arange(seq_len, device="cuda")

    def step():
        start = torch.randint(n, (batch_size,), generator=g, device="cuda")
        rows = torch.minimum(start[:, None] + ar, ends[start][:, None])
        if seq_len == 1:
            rows = rows[:, 0]
        loss = F.mse_loss(model(x_all[rows]), act[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="bc,bc_rnn,iql,td3_bc,cql")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--amp", action="store_true", help="also measure train.amp=bf16 (eager)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"bench_gpu: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False): this "
              "benchmark measures GPU training and has nothing to run here", file=sys.stderr)
        return 2
    import bench_offline_rl as off
    import bench_train_step as bts
    import common

    from modmimic.data.hdf5 import load_episode_store

    common.timed = cuda_timed  # compare() times through common.timed
    workloads = {  # recipe: (name, batch, extra overrides, bare step factory(store, B))
        "bc": ("bc_mlp1024x2_b100", 100, [], lambda s, B: bare_bc_gpu(s, 1, bts.BareBC(sum(common.OBS.values())), B)),
        "bc_rnn": ("bc_rnn_lstm400x2_seq10_b100", 100, ["algo.actor_layer_dims=[]"],
                   lambda s, B: bare_bc_gpu(s, 10, bts.BareRNN(sum(common.OBS.values())), B)),
    }
    for r, (name, B, fn, extra) in off.WORKLOADS.items():
        workloads[r] = (name, B, extra, lambda s, B, fn=fn: _on_cuda(lambda: fn(GPUData(s, B))))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.hdf5")
        common.make_dataset(path)
        store = load_episode_store(path, list(common.OBS))
        gpu_store = dataclasses.replace(store, lengths=store.lengths, offsets=store.offsets)
        print(json.dumps({"dataset_samples": store.num_samples, "torch": torch.__version__,
                          "gpu": torch.cuda.get_device_name()}), file=sys.stderr)
        for recipe in args.only.split(","):
            name, B, extra, bare = workloads[recipe]
            variants = [("eager", modmimic_gpu_step(gpu_store, recipe, B, extra))]
            if args.amp:
                variants.append(("eager+bf16", modmimic_gpu_step(gpu_store, recipe, B, [*extra, "train.amp=bf16"])))
            torch._dynamo.reset()
            variants.append(("compiled", modmimic_gpu_step(gpu_store, recipe, B, [*extra, "train.compile=true"])))
            variants.append(("compiled+graphs", modmimic_gpu_step(gpu_store, recipe, B, [
                *extra, "train.compile=true", "train.cuda_graphs=true"])))
            torch.manual_seed(0)
            variants.append(("torch", bare(store, B)))
            steps = max(5, args.steps // 5) if recipe in ("cql", "bc_rnn") else args.steps
            common.compare(name, variants, steps, args.repeats, threads=torch.get_num_threads())
    return 0


def _on_cuda(make):
    with torch.device("cuda"):  # the bare loops build their networks on the default device
        return make()


if __name__ == "__main__":
    sys.exit(main())
