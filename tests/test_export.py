"""``python -m modmimic.export``: every format of BC, BC-RNN, Diffusion Policy, ACT and an image BC policy, run in a
subprocess that cannot import modmimic (tests/exported_runner.py), equals the in-process ``RolloutPolicy`` to 1e-5 —
the RNN with its hidden state carried, the diffusion policy with the same noise, the chunk as the acting path
executes it. Bad input is refused with exit status 2."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from deploy_ckpts import train_checkpoint
from modmimic.export import FORMATS, main as export_main
from modmimic.policy import policy_from_checkpoint
from test_vision import IMAGE_OVERRIDES, IMG, image_hdf5  # noqa: F401 (fixture)

ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))  # the `export` extra
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exported_runner.py")
TOL = 1e-5
B = 2  # environments per call


@pytest.fixture(scope="module")
def ckpts(reach_hdf5, image_hdf5, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("ckpt")
    out = {r: train_checkpoint(d / f"{r}.pth", reach_hdf5, r) for r in ("bc", "bc_rnn", "diffusion_policy", "act")}
    img = [o for o in IMAGE_OVERRIDES if not o.startswith("train.batch_size")]
    out["bc_image"] = train_checkpoint(d / "bc_image.pth", image_hdf5, "bc", keys=["image", "pos"], overrides=img)
    return out


def observations(policy, rng, n=1):
    """``n`` batches of ``B`` random observations as the environment gives them (images uint8)."""
    shapes = policy.policy.obs_shapes
    return [{k: (rng.integers(0, 256, (B, *s), dtype=np.uint8) if len(s) == 3 else
                 rng.standard_normal((B, *s)).astype(np.float32)) for k, s in shapes.items()} for _ in range(n)]


def reference(recipe, ckpt, manifest):
    """``(feed, expected)``: the exported module's inputs and what the in-process policy does with them."""
    policy, _ = policy_from_checkpoint(ckpt_path=ckpt)
    rng = np.random.default_rng(1)
    keys = manifest["obs_keys"]
    if manifest["acting"] == "direct":
        (obs,) = observations(policy, rng)
        policy.start_episode(B)
        return dict(obs), {"action": policy(obs, batched_ob=True)}
    if manifest["acting"] == "recurrent":
        # step 1 from zeros, then step 2 from the hidden state the in-process path carried
        o1, o2 = observations(policy, rng, 2)
        policy.start_episode(B)
        policy(o1, batched_ob=True)
        h, c = (s.numpy().copy() for s in policy.policy.act_path.state)
        a2 = policy(o2, batched_ob=True)
        h2, c2 = (s.numpy() for s in policy.policy.act_path.state)
        return {**o2, "h": h, "c": c}, {"action": a2, "h_out": h2, "c_out": c2}
    ch = manifest["chunking"]
    (obs,) = observations(policy, rng)
    feed = {k: np.repeat(obs[k][:, None], ch["obs_horizon"], 1) if ch["obs_horizon"] > 1 else obs[k] for k in keys}
    torch.manual_seed(7)
    if "diffusion" in manifest:  # the same draws, one at a time in the sampler's order
        shape = manifest["diffusion"]["noise_shape"]
        feed["noise"] = torch.stack([torch.randn(shape[1:]) for _ in range(shape[0])]).numpy()
    torch.manual_seed(7)
    policy.start_episode(B)
    n = 1 if ch["temporal_ensemble"] else ch["action_horizon"]  # an ensemble's first action is chunk[0]
    acts = np.stack([policy(obs, batched_ob=True) for _ in range(n)], 1)
    return feed, {"actions": acts}


def export(ckpt, fmt, out):
    code = export_main([f"checkpoint={ckpt}", f"format={fmt}", f"out={out}", f"batch={B}"])
    assert code == 0, f"export {fmt} failed"
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("recipe", ["bc", "bc_rnn", "diffusion_policy", "act", "bc_image"])
def test_export_matches_eager_without_modmimic(recipe, ckpts, tmp_path):
    args, expected = [], {}
    for fmt in [f for f in FORMATS if f != "onnx" or ONNX]:
        m = export(ckpts[recipe], fmt, tmp_path / fmt)
        assert m["checkpoint_sha256"] == __import__("modmimic.export").export.sha256_file(ckpts[recipe])
        assert m["batch"] == B and m["action_dim"] == 2 and m["obs_keys"] == sorted(m["obs_shapes"])
        feed, want = reference(recipe, ckpts[recipe], m)
        np.savez(tmp_path / f"{fmt}_in.npz", **feed)
        args += [str(tmp_path / fmt), str(tmp_path / f"{fmt}_in.npz"), str(tmp_path / f"{fmt}_out.npz")]
        expected[fmt] = (m, want)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    r = subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for fmt, (m, want) in expected.items():
        got = dict(np.load(tmp_path / f"{fmt}_out.npz"))
        for name, value in want.items():
            g = got[name] if m["acting"] != "chunked" else got[name][:, :value.shape[1]]
            assert g.shape == value.shape, (fmt, name, g.shape, value.shape)
            err = float(np.abs(g - value).max())
            assert err <= TOL, f"{recipe} {fmt} {name}: exported differs from eager by {err}"
    if recipe == "bc_image":
        assert expected["pt2"][0]["inputs"][0] == {"name": "image", "shape": [B, IMG, IMG, 3], "dtype": "uint8"}
    if recipe == "diffusion_policy":
        assert expected["pt2"][0]["diffusion"]["noise_shape"] == [1 + 4, B, 8, 2]  # DDPM: 5 steps, 4 with t > 0


def test_export_bad_input(ckpts, tmp_path, capsys):
    assert export_main(["checkpoint=/nonexistent.pth", f"out={tmp_path}"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert export_main([f"checkpoint={ckpts['bc']}", "format=tflite", f"out={tmp_path / 'x'}"]) == 2
    assert "format must be one of" in capsys.readouterr().err
    assert export_main([f"checkpoint={ckpts['bc']}", "formt=onnx"]) == 2
    assert "did you mean 'format'" in capsys.readouterr().err
    export(ckpts["bc"], "torchscript", tmp_path / "e")
    before = os.path.getmtime(tmp_path / "e" / "policy.pt")
    assert export_main([f"checkpoint={ckpts['bc']}", f"out={tmp_path / 'e'}"]) == 2  # never replaces silently
    assert "overwrite=true" in capsys.readouterr().err
    assert os.path.getmtime(tmp_path / "e" / "policy.pt") == before


def test_onnx_runtime_installed():
    if not ONNX:
        pytest.skip("ONNX export untested: pip install 'modmimic[export]' (onnx, onnxruntime, onnxscript)")
