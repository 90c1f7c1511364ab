"""Training-step cost of modmimic recipes next to the same math written in bare PyTorch, in one process.

Prints one JSON line per measurement: ``workload``, ``steps_per_s``, ``ms_per_step``, ``ratio_vs_torch``
(bare-PyTorch step time / modmimic step time: 1.0 = no framework tax, > 1 = faster), ``threads``.

* modmimic step = ``sampler.sample()`` (vectorised window gather) + ``algo.process_batch_for_training`` +
  ``algo.train_on_batch`` (+ ``log_info``, as the training loop does).
* bare step = index a dict of per-key tensors with random indices, ``torch.cat`` the observation keys, forward,
  loss, ``zero_grad``/``backward``/``Adam.step``, ``loss.item()``.
The two run interleaved (A B A B ...) over ``--repeats`` rounds of ``--steps`` steps; the median round time is
reported. Data: a synthetic robomimic-format file of ~30k samples with Lift-like low-dim keys.

* ``diffusion_policy``: the bare step is the same denoising step by hand (the same UNet module class, frame-stacked
  observation rows and action chunks gathered by index, noise, ``q_sample``, MSE, AdamW, the per-batch cosine LR
  step and the EMA lerp with the power-schedule decay).
* ``dp_latency``: acting cost of one chunk (``predict_chunk``, batch 1) with DDPM 100 and DDIM 10 denoising steps,
  ``ms_per_chunk`` for robomimic's default UNet and for the small one.

Usage: ``python benchmarks/bench_train_step.py [--threads 1] [--repeats 7] [--steps 30]
[--only bc,bc_rnn,sampler,diffusion_policy,dp_latency]``
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from common import ACT, OBS, compare, make_dataset, modmimic_setup, timed
from modmimic import keys as K
from modmimic.data.hdf5 import load_episode_store
from modmimic.data.sampler import WindowSampler


class BareBC(nn.Module):
    def __init__(self, obs_dim, hidden=(1024, 1024)):
        super().__init__()
        layers, d = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, ACT)

    def forward(self, x):
        return torch.tanh(self.out(self.body(x)))


class BareRNN(nn.Module):
    def __init__(self, obs_dim, hidden=400, layers=2):
        super().__init__()
        self.rnn = nn.LSTM(obs_dim, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, ACT)

    def forward(self, x):
        return torch.tanh(self.out(self.rnn(x)[0]))


def bare_setup(store, seq_len, model, batch_size, seed=0):
    """Per-key tensors and valid (clamped) window rows: the minimum data path of a hand-written loop."""
    keys = sorted(OBS)
    cols = {k: store.flat[:, store.columns[K.obs(k)][0]:store.columns[K.obs(k)][1]].contiguous() for k in keys}
    a0, a1, _ = store.columns[K.ACTION]
    act = store.flat[:, a0:a1].contiguous()
    ends = torch.repeat_interleave(store.offsets + store.lengths - 1, store.lengths)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    n = store.flat.shape[0]
    ar = torch.arange(seq_len)

    def step():
        start = torch.randint(n, (batch_size,), generator=g)
        rows = torch.minimum(start[:, None] + ar, ends[start][:, None])
        if seq_len == 1:
            rows = rows[:, 0]
        x = torch.cat([cols[k][rows] for k in keys], -1)
        loss = F.mse_loss(model(x), act[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


DP_SMALL = ["algo.unet.down_dims=[64,128,256]", "algo.unet.diffusion_step_embed_dim=64"]


def bare_dp_setup(store, model, batch_size, To=2, Tp=16, seed=0):
    """Diffusion Policy's training step by hand: windows of To observations and Tp actions starting at t - To + 1
    (clamped into the demo), AdamW, cosine LR stepped per batch, EMA with the power-0.75 decay."""
    import copy
    import math

    from modmimic.components.nets.diffusion_schedule import alphas_cumprod_for, betas_for
    from modmimic.program import ema_decay

    keys = sorted(OBS)
    cols = {k: store.flat[:, store.columns[K.obs(k)][0]:store.columns[K.obs(k)][1]].contiguous() for k in keys}
    a0, a1, _ = store.columns[K.ACTION]
    act = store.flat[:, a0:a1].contiguous()
    lo = torch.repeat_interleave(store.offsets, store.lengths)
    hi = torch.repeat_interleave(store.offsets + store.lengths - 1, store.lengths)
    ab = alphas_cumprod_for(betas_for(100))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 500) if i < 500 else
                                              0.5 * (1 + math.cos(math.pi * min(1.0, (i - 500) / 1e6))))
    ema = copy.deepcopy(model).requires_grad_(False)
    ema_p, p = list(ema.parameters()), list(model.parameters())
    g = torch.Generator().manual_seed(seed)
    n = store.flat.shape[0]
    rel = torch.arange(-(To - 1), Tp - To + 1)
    state = {"step": 0}

    def step():
        t0 = torch.randint(n, (batch_size,), generator=g)
        rows = torch.maximum(torch.minimum(t0[:, None] + rel, hi[t0][:, None]), lo[t0][:, None])
        obs = torch.cat([cols[k][rows[:, :To]] for k in keys], -1)
        x0 = act[rows]
        noise = torch.randn(x0.shape)
        t = torch.randint(0, 100, (batch_size,))
        a = ab[t][:, None, None]
        loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, obs), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_p, p, 1.0 - ema_decay(state["step"]))
        state["step"] += 1
        sched.step()
        return loss.item()

    return step


def dp_latency(store, threads: int, repeats: int) -> None:
    """ms per ``predict_chunk`` (batch 1) with DDPM 100 and DDIM 10 steps."""
    for name, dims in (("unet256-512-1024", []), ("unet64-128-256", DP_SMALL)):
        for sampler, extra in (("ddpm100", []), ("ddim10", ["algo.ddpm.enabled=false", "algo.ddim.enabled=true"])):
            _, algo = modmimic_setup(store, "diffusion_policy", 1, [*dims, *extra])
            algo.set_eval()
            net = algo.nets["ema_policy"]
            td = WindowSampler(store, 1, seq_length=1, frame_stack=2).sample()
            with torch.no_grad():
                net.predict_chunk(td)
                t = statistics.median(timed(lambda: net.predict_chunk(td), 1) for _ in range(max(3, repeats)))
            print(json.dumps({"workload": f"dp_latency/{name}/{sampler}", "ms_per_chunk": round(t * 1e3, 2),
                              "threads": threads}), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--only", default="sampler,bc,bc_rnn")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.hdf5")
        make_dataset(path)
        store = load_episode_store(path, list(OBS))
        print(json.dumps({"dataset_samples": store.num_samples, "torch": torch.__version__}), file=sys.stderr)
        if "sampler" in only:
            for T in (10, 1):
                s = WindowSampler(store, 100, seq_length=T)
                timed(s.sample, 50)
                t = statistics.median(timed(s.sample, 500) for _ in range(5))
                print(json.dumps({"workload": f"sampler/[100,{T}]", "ms_per_batch": round(t * 1e3, 4),
                                  "batches_per_s": round(1 / t, 1), "threads": args.threads}), flush=True)
        if "bc" in only:
            torch.manual_seed(0)
            mm, _ = modmimic_setup(store, "bc", 100)
            bare = bare_setup(store, 1, BareBC(sum(OBS.values())), 100)
            compare("bc_mlp1024x2_b100", [("modmimic", mm), ("torch", bare)], args.steps, args.repeats, args.threads)
        if "bc_rnn" in only:
            torch.manual_seed(0)
            mm, _ = modmimic_setup(store, "bc_rnn", 100, ["algo.actor_layer_dims=[]"])
            bare = bare_setup(store, 10, BareRNN(sum(OBS.values())), 100)
            compare("bc_rnn_lstm400x2_seq10_b100", [("modmimic", mm), ("torch", bare)], max(5, args.steps // 5), args.repeats, args.threads)
        if "diffusion_policy" in only:
            from modmimic.components.nets.diffusion import ConditionalUnet1D

            torch.manual_seed(0)
            mm, _ = modmimic_setup(store, "diffusion_policy", 100, DP_SMALL)
            bare = bare_dp_setup(store, ConditionalUnet1D(ACT, 2 * sum(OBS.values()), 64, [64, 128, 256]), 100)
            compare("diffusion_policy_unet64-128-256_b100", [("modmimic", mm), ("torch", bare)],
                    max(2, args.steps // 10), args.repeats, args.threads)
        if "dp_latency" in only:
            dp_latency(store, args.threads, args.repeats)


if __name__ == "__main__":
    main()
