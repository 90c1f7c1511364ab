"""Training-step cost of modmimic recipes next to the same math written in bare PyTorch, in one process.

Prints one JSON line per measurement: ``workload``, ``steps_per_s``, ``ms_per_step``, ``ratio_vs_torch``
(bare-PyTorch step time / modmimic step time: 1.0 = no framework tax, > 1 = faster), ``threads``.

* modmimic step = ``sampler.sample()`` (vectorised window gather) + ``algo.process_batch_for_training`` +
  ``algo.train_on_batch`` (as the training loop does: log values stay on the device until the epoch ends).
* bare step = index a dict of per-key tensors with random indices, ``torch.cat`` the observation keys, forward,
  loss, ``zero_grad``/``backward``/``Adam.step``, ``loss.item()``.
The two run interleaved (A B A B ...) over ``--repeats`` rounds of ``--steps`` steps; the median round time is
reported. Data: a synthetic robomimic-format file of ~30k samples with Lift-like low-dim keys.

* ``diffusion_policy``: the bare step is the same denoising step by hand (the same UNet module class, frame-stacked
  observation rows and action chunks gathered by index, noise, ``q_sample``, MSE, AdamW, the per-batch cosine LR
  step and the EMA lerp with the power-schedule decay).
* ``dp_latency``: acting cost of one chunk (``predict_chunk``, batch 1) with DDPM 100 and DDIM 10 denoising steps,
  ``ms_per_chunk`` for robomimic's default UNet and for the small one.
* ``flow_latency``: the same acting cost for the flow policy with 1, 4 and 10 Euler steps next to Diffusion Policy
  with DDIM 10 on the same UNet (robomimic's default, the small one, and the ``fast`` preset's [32, 64] / 32), the
  four samplers timed interleaved in every round (median of ``--repeats`` rounds); ``ratio_vs_ddim10`` = flow time /
  DDIM-10 time.
* ``vqbet_latency``: VQ-BeT's acting cost per chunk and per executed action, LeRobot's and the ``fast`` network, next
  to the ``fast`` Diffusion Policy (DDIM 10) and flow policy (4 steps), interleaved.

``--only image`` (opt-in; slow on a CPU): image BC-RNN, two 84x84 uint8 cameras, ResNet18Conv + SpatialSoftmax(32) +
Linear(64) + ReLU per camera, batch 16, seq 10, against the same math bare (the same plain-torch ResNet-18 trunk
class; uint8 gather, /255, spatial softmax, LSTM and loss written out).

Usage: ``python benchmarks/bench_train_step.py [--threads 1] [--repeats 7] [--steps 30]
[--only bc,bc_rnn,sampler,diffusion_policy,dp_latency,flow_latency,vqbet_latency,image]``
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


DP_FAST = ["algo.unet.down_dims=[32,64]", "algo.unet.diffusion_step_embed_dim=32"]


def flow_latency(store, threads: int, repeats: int) -> None:
    """ms per ``predict_chunk`` (batch 1): DDIM 10 vs flow matching with 1 / 4 / 10 Euler steps, same UNet."""
    for name, dims in (("unet256-512-1024", []), ("unet64-128-256", DP_SMALL), ("unet32-64", DP_FAST)):
        nets = {"ddim10": modmimic_setup(store, "diffusion_policy", 1,
                                         [*dims, "algo.ddpm.enabled=false", "algo.ddim.enabled=true"])[1]}
        for steps in (1, 4, 10):
            nets[f"flow{steps}"] = modmimic_setup(store, "flow_policy", 1, [*dims, f"algo.flow.steps={steps}"])[1]
        td = WindowSampler(store, 1, seq_length=1, frame_stack=2).sample()
        times = {k: [] for k in nets}
        with torch.no_grad():
            for algo in nets.values():
                algo.set_eval()
                algo.nets["ema_policy"].predict_chunk(td)
            for _ in range(max(3, repeats)):
                for k, algo in nets.items():
                    times[k].append(timed(lambda: algo.nets["ema_policy"].predict_chunk(td), 1))
        ddim = statistics.median(times["ddim10"])
        for k, ts in times.items():
            t = statistics.median(ts)
            print(json.dumps({"workload": f"flow_latency/{name}/{k}", "ms_per_chunk": round(t * 1e3, 2),
                              "ratio_vs_ddim10": round(t / ddim, 3), "threads": threads}), flush=True)


VQBET_FAST = ["algo.gpt.embed_dim=128", "algo.gpt.num_layers=2", "algo.gpt.num_heads=4",
              "algo.vqbet.head_hidden_dim=256"]


def vqbet_latency(store, threads: int, repeats: int) -> None:
    """ms per chunk (batch 1) of VQ-BeT (LeRobot's network and the ``fast`` one: GPT, code sampling, VQ-VAE decoding)
    next to the ``fast`` Diffusion Policy (DDIM 10) and flow policy (4 steps), timed interleaved in every round;
    ``ms_per_action`` divides by the actions executed per chunk (VQ-BeT 5, the others 8)."""
    algos = {"vq_bet": (modmimic_setup(store, "vq_bet", 1)[1], "prior"),
             "vq_bet_fast": (modmimic_setup(store, "vq_bet", 1, VQBET_FAST)[1], "prior"),
             "ddim10_fast": (modmimic_setup(store, "diffusion_policy", 1, [*DP_FAST, "algo.ddpm.enabled=false",
                                                                          "algo.ddim.enabled=true"])[1], "ema_policy"),
             "flow4_fast": (modmimic_setup(store, "flow_policy", 1, [*DP_FAST, "algo.flow.steps=4"])[1], "ema_policy")}
    calls, per_chunk = {}, {}
    for k, (algo, net) in algos.items():
        algo.set_eval()
        path = algo.act_path
        td = WindowSampler(store, 1, seq_length=1, frame_stack=path.To).sample()
        extra = {a: algo.nets[n] for a, n in getattr(path, "net_args", {}).items()}
        calls[k] = (lambda n=algo.nets[net], td=td, extra=extra: n.predict_chunk(td, **extra))
        per_chunk[k] = path.Ta
    times = {k: [] for k in calls}
    with torch.no_grad():
        for c in calls.values():
            c()
        for _ in range(max(3, repeats)):
            for k, c in calls.items():
                times[k].append(timed(c, 1))
    for k, ts in times.items():
        t = statistics.median(ts)
        print(json.dumps({"workload": f"vqbet_latency/{k}", "ms_per_chunk": round(t * 1e3, 2),
                          "ms_per_action": round(t * 1e3 / per_chunk[k], 3), "threads": threads}), flush=True)


CAMS = ("agentview_image", "robot0_eye_in_hand_image")


class BareImageRNN(nn.Module):
    """Per camera: /255 -> ResNet-18 trunk -> 1x1 conv to 32 maps -> spatial softmax -> Linear(64) -> ReLU; concat
    with the low-dim keys -> LSTM(400, 2) -> tanh(Linear)."""

    def __init__(self, low_dim: int, size: int = 84, kp: int = 32, feat: int = 64):
        super().__init__()
        from modmimic.components.nets.vision import ResNet18Conv

        self.trunks = nn.ModuleList(ResNet18Conv((3, size, size)) for _ in CAMS)
        self.kp = nn.ModuleList(nn.Conv2d(512, kp, 1) for _ in CAMS)
        self.proj = nn.ModuleList(nn.Linear(2 * kp, feat) for _ in CAMS)
        h = w = ResNet18Conv((3, size, size)).output_shape()[1]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], -1))  # [HW, 2]
        self.rnn = nn.LSTM(low_dim + feat * len(CAMS), 400, 2, batch_first=True)
        self.out = nn.Linear(400, ACT)

    def forward(self, images, low):
        B, T = low.shape[:2]
        feats = []
        for img, trunk, kp, proj in zip(images, self.trunks, self.kp, self.proj):
            x = img.reshape(B * T, *img.shape[2:]).float().div(255.0).permute(0, 3, 1, 2)
            m = kp(trunk(x)).flatten(2).softmax(-1)  # [BT, K, HW]
            feats.append(F.relu(proj((m @ self.grid).flatten(1))).view(B, T, -1))
        y = self.rnn(torch.cat([low, *feats], -1))[0]
        return torch.tanh(self.out(y))


def make_image_dataset(path: str, n_demos: int = 10, T: int = 60, size: int = 84, seed: int = 0) -> None:
    import numpy as np

    from modmimic.data.synthetic import write_robomimic_hdf5

    rng = np.random.default_rng(seed)
    demos = []
    for _ in range(n_demos):
        obs = {k: rng.normal(size=(T, d)) for k, d in OBS.items()}
        obs.update({c: rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8) for c in CAMS})
        demos.append({"obs": obs, "actions": rng.uniform(-0.99, 0.99, (T, ACT))})
    write_robomimic_hdf5(path, demos)


def image_bench(tmp, args) -> None:
    path = os.path.join(tmp, "bench_image.hdf5")
    make_image_dataset(path)
    keys = sorted(OBS) + list(CAMS)
    store = load_episode_store(path, keys, load_next_obs=False)
    torch.manual_seed(0)
    mm, _ = modmimic_setup(store, "bc_rnn", 16, ["algo.actor_layer_dims=[]", f"observation.modalities.obs.rgb=[{','.join(CAMS)}]"])
    model = BareImageRNN(sum(OBS.values()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    low = {k: store.flat[:, store.columns[K.obs(k)][0]:store.columns[K.obs(k)][1]].contiguous() for k in sorted(OBS)}
    imgs = [store.uint8[K.obs(c)] for c in CAMS]
    a0, a1, _ = store.columns[K.ACTION]
    act = store.flat[:, a0:a1].contiguous()
    ends = torch.repeat_interleave(store.offsets + store.lengths - 1, store.lengths)
    g, n, ar = torch.Generator().manual_seed(0), store.flat.shape[0], torch.arange(10)

    def bare():
        start = torch.randint(n, (16,), generator=g)
        rows = torch.minimum(start[:, None] + ar, ends[start][:, None])
        loss = F.mse_loss(model([im[rows] for im in imgs], torch.cat([low[k][rows] for k in sorted(OBS)], -1)),
                          act[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    compare("bc_rnn_image_resnet18x2_84_seq10_b16", [("modmimic", mm), ("torch", bare)], max(1, args.steps // 10),
            args.repeats, args.threads)


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
        if "flow_latency" in only:
            flow_latency(store, args.threads, args.repeats)
        if "vqbet_latency" in only:
            vqbet_latency(store, args.threads, args.repeats)
        if "image" in only:
            image_bench(tmp, args)


if __name__ == "__main__":
    main()
