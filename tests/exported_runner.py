"""Run exported modmimic policies with torch or onnxruntime alone:
``python exported_runner.py <export dir> <inputs.npz> <outputs.npz> [<export dir> <inputs.npz> <outputs.npz> ...]``.
Importing modmimic (or its training stack: tensordict, omegaconf, hydra) is blocked, so
this proves the export needs none of it. Inputs are the npz arrays named as the manifest's inputs; outputs are written
under the manifest's output names."""
import importlib.abc
import json
import os
import sys

BLOCKED = ("modmimic", "components", "recipes", "tensordict", "omegaconf", "hydra", "torchrl")


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: an exported policy must run without it")
        return None


sys.meta_path.insert(0, Block())
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if p and os.path.abspath(p) not in (HERE, os.path.dirname(HERE))]

import numpy as np  # noqa: E402


def run(folder, src, dst):
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    feed = dict(np.load(src))
    names_in = [i["name"] for i in manifest["inputs"]]
    names_out = [o["name"] for o in manifest["outputs"]]
    path = os.path.join(folder, manifest["file"])
    if manifest["format"] == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()  # one thread, no spin-waiting: on 2 shared cores ORT's pool once spun for minutes
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, {i.name: feed[n] for i, n in zip(sess.get_inputs(), names_in)})
    else:
        import torch

        torch.set_num_threads(1)
        args = [torch.from_numpy(feed[n]) for n in names_in]
        if manifest["format"] == "torchscript":
            module = torch.jit.load(path)
        else:
            module = torch.export.load(path).module()
        with torch.no_grad():
            got = module(*args)
        got = [g.numpy() for g in (got if isinstance(got, (tuple, list)) else [got])]
    np.savez(dst, **dict(zip(names_out, got)))
    print('ok', manifest['format'], len(got))


args = sys.argv[1:]
for n in range(0, len(args), 3):
    run(*args[n:n + 3])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
