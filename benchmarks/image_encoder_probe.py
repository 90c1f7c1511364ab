"""Does an image encoder use its images? BC on agentview + wrist images and proprioception, held-out action error.

    python benchmarks/image_encoder_probe.py images.hdf5 [--steps 400] [--encoders blind,robomimic_ss,...]
                                             [--lr 1e-3] [--batch 64] [--json out.json]

``images.hdf5`` is a robomimic image dataset with ``agentview_image`` and ``robot0_eye_in_hand_image`` (e.g.
``python -m modmimic.dataset states_to_obs modmimic/data/default/lift.hdf5 lift84.hdf5 --camera-names agentview
robot0_eye_in_hand --camera-height 84 --camera-width 84 --exclude-next-obs``). The last tenth of the demos is held
out. Each encoder (one per camera, built by ``observation.encoder.rgb`` blocks exactly as training builds them, with
robomimic's 76x76 random crops) feeds an MLP 256x256 with the normalized proprioception (eef position, quaternion,
gripper); every run starts from the same seed and draws the same batches. Every quarter of the steps it prints
``(step, train loss, held-out MSE, held-out MSE with the images of other frames, seconds)``: an encoder that uses its
images has a held-out error below the blind policy's, and a swapped-image error above its own.
"""
from __future__ import annotations

import argparse
import json
import time

import h5py
import numpy as np
import torch
from torch import nn

from modmimic.components.nets.core import build_key_encoder

CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")
PROPRIO = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
CROP = {"obs_randomizer_class": "CropRandomizer",
        "obs_randomizer_kwargs": {"crop_height": 76, "crop_width": 76, "num_crops": 1, "pos_enc": False}}


def rgb_block(backbone: str, pool, group_norm: bool = False, **pool_kwargs) -> dict:
    return {"core_class": "VisualCore", "obs_randomizer_class": CROP["obs_randomizer_class"],
            "obs_randomizer_kwargs": CROP["obs_randomizer_kwargs"],
            "core_kwargs": {"feature_dimension": 64, "flatten": True, "backbone_class": backbone,
                            "backbone_kwargs": {"use_group_norm": group_norm} if group_norm else {},
                            "pool_class": pool, "pool_kwargs": pool_kwargs}}


ENCODERS = {
    "blind": None,
    "robomimic_ss": rgb_block("ShallowConv", "SpatialSoftmax", num_kp=32),
    "gn_ss": rgb_block("ShallowConv", "SpatialSoftmax", group_norm=True, num_kp=32),
    "gn_ss_t01": rgb_block("ShallowConv", "SpatialSoftmax", group_norm=True, num_kp=32, temperature=0.1,
                           learnable_temperature=True),
    "flat": rgb_block("ShallowConv", None),
    "gn_flat": rgb_block("ShallowConv", None, group_norm=True),
}


def load(f, names):
    def cat(key):
        return np.concatenate([f[f"data/{n}/{key}"][()] for n in names])
    images = [torch.as_tensor(cat(f"obs/{c}")) for c in CAMERAS]
    proprio = torch.as_tensor(np.concatenate([cat(f"obs/{k}") for k in PROPRIO], 1)).float()
    return images, proprio, torch.as_tensor(cat("actions")).float()


class Policy(nn.Module):
    def __init__(self, block, shape, mean, std, action_dim):
        super().__init__()
        self.encoders = nn.ModuleList(
            [build_key_encoder(c, shape, "rgb", block, nn.ReLU) for c in CAMERAS] if block else [])
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        width = mean.numel() + sum(e.output_dim for e in self.encoders)
        self.mlp = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, action_dim))

    def forward(self, images, proprio):
        parts = [(proprio - self.mean) / self.std] + [e(x) for e, x in zip(self.encoders, images)]
        return self.mlp(torch.cat(parts, -1))


def held_out_mse(policy, data, shift=0):
    images, proprio, actions = data
    policy.eval()
    errs = []
    with torch.no_grad():
        for i in range(0, len(actions), 256):
            ims = [x[i:i + 256].roll(shift, 0) if shift else x[i:i + 256] for x in images]
            errs.append((policy(ims, proprio[i:i + 256]) - actions[i:i + 256]).square().mean(1))
    policy.train()
    return torch.cat(errs).mean().item()


def probe(name, train, held, steps, lr, batch):
    images, proprio, actions = train
    torch.manual_seed(1)
    policy = Policy(ENCODERS[name], tuple(images[0].shape[1:]), proprio.mean(0), proprio.std(0) + 1e-6,
                    actions.shape[1])
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    gen, t0, log = torch.Generator().manual_seed(0), time.time(), []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(actions), (batch,), generator=gen)
        loss = (policy([x[idx] for x in images], proprio[idx]) - actions[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 4) == 0:
            swapped = held_out_mse(policy, held, shift=7) if ENCODERS[name] else None
            log.append((step, round(loss.item(), 4), round(held_out_mse(policy, held), 4),
                        None if swapped is None else round(swapped, 4), round(time.time() - t0)))
    return log


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--encoders", default=",".join(ENCODERS))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with h5py.File(a.dataset) as f:
        names = sorted(f["data"], key=lambda s: int(s.split("_")[-1]))
        n_held = max(2, len(names) // 10)
        train, held = load(f, names[:-n_held]), load(f, names[-n_held:])
    out = {}
    for name in a.encoders.split(","):
        out[name] = probe(name, train, held, a.steps, a.lr, a.batch)
        print(name, out[name], flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
