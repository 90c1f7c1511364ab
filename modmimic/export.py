"""``python -m modmimic.export checkpoint=<ckpt> format=torchscript|onnx|pt2 out=<dir> [batch=1]`` — the acting path
of a checkpoint as a self-contained module that runs with torch alone (TorchScript, ``torch.export``) or with
onnxruntime alone (ONNX), plus ``manifest.json`` describing its inputs, outputs and how to drive it.

What is exported (one ``nn.Module`` over plain tensors, observation keys in sorted order, as the encoders read them):

* observation normalization (the checkpoint's statistics, ``(x - offset) / scale``), the observation encoders (image
  keys stay ``uint8 [B, H, W, C]``: the encoder makes them float), the network's evaluation output and the action
  un-normalization (per action key, ``a * scale + offset``);
* ``direct`` (BC, BC-Gaussian/GMM, IQL, TD3-BC, ... actors): ``obs -> action [B, A]``;
* ``recurrent`` (BC-RNN): ``obs, h[, c] -> action, h[, c]``. The caller holds the hidden state: zeros at an episode
  start and every ``recurrent.horizon`` steps (robomimic's BC-RNN ``get_action``), then the returned one;
* ``chunked`` (Diffusion Policy, ACT, BC-Transformer): ``obs window -> actions [B, action_horizon, A]``, the part of
  the predicted chunk that the in-process acting path executes (:class:`~modmimic.components.acting.Chunked`): the
  window holds the last ``obs_horizon`` observations oldest first (``[B, To, ...]``; ``[B, ...]`` when
  ``obs_horizon == 1``), the first observation repeated at an episode start. Execute the actions one per step and
  call again; with ``temporal_ensemble`` call every step and average (manifest ``chunking``). Diffusion policies
  export the whole sampling loop (DDPM or DDIM, unrolled) with every Gaussian draw as the input ``noise``
  ``[1 + draws, B, Tp, A]``: ``torch.randn`` of that shape reproduces in-process sampling with the same RNG.

Recipes whose acting path samples and scores (BCQ), plans subgoals (HBC, IRIS) or converts rot_6d actions are
refused (exit 2) with the reason. The manifest names the checkpoint's sha256, recipe, normalization statistics,
input and output names, shapes and dtypes. ``batch`` fixes the leading batch size of the exported graph.

Exit status: 0 written, 2 bad input (arguments, checkpoint, a recipe that cannot be exported), 1 an exporter
failure, 130 interrupted.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

from modmimic.cli import ArgumentError, parse_kv, report as cli_report, run_main, usage_text

PROG = "modmimic.export"
EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
FORMATS = {"torchscript": "policy.pt", "onnx": "policy.onnx", "pt2": "policy.pt2"}
MANIFEST = "manifest.json"

ARGS = {
    "checkpoint": (str, None, "the checkpoint (.pth) to export (required)"),
    "format": (str, "torchscript", f"one of {', '.join(FORMATS)}"),
    "out": (str, None, "output folder (created; its policy file and manifest.json must not exist unless overwrite)"),
    "batch": (int, 1, "batch size (environments) of the exported graph"),
    "overwrite": (bool, False, "replace an existing export in out="),
    "opset": (int, 18, "ONNX opset"),
}


class ExportError(ValueError):
    """A checkpoint's acting path that cannot be exported (the message says why)."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the exported modules: plain tensors in, plain tensors out ------------------------------------------------

def _build(policy):
    import torch
    from tensordict import TensorDict
    from torch import nn

    from modmimic import keys as K

    class Acting(nn.Module):
        """Normalize the observation tensors (sorted key order), run ``body`` on their TensorDict, un-normalize the
        actions. ``window``: the inputs carry a time axis ``[B, To, ...]``."""

        def __init__(self, net, keys, stats, affine, window: bool):
            super().__init__()
            self.net, self.keys, self.window = net, list(keys), window
            self.norm = [k in stats for k in self.keys]
            for i, k in enumerate(self.keys):
                if k in stats:
                    self.register_buffer(f"obs_offset_{i}", torch.as_tensor(stats[k][0]))
                    self.register_buffer(f"obs_scale_{i}", torch.as_tensor(stats[k][1]))
            self.unnorm = affine is not None
            if affine is not None:
                self.register_buffer("action_offset", torch.as_tensor(affine[0]))
                self.register_buffer("action_scale", torch.as_tensor(affine[1]))

        def observation(self, xs):
            obs = {}
            for i, (k, x) in enumerate(zip(self.keys, xs)):
                if self.norm[i]:
                    x = (x.float() - getattr(self, f"obs_offset_{i}")) / getattr(self, f"obs_scale_{i}")
                elif x.dtype != torch.uint8:
                    x = x.float()
                obs[k] = x
            lead = list(xs[0].shape[:2 if self.window else 1])
            return TensorDict({K.OBS: TensorDict(obs, batch_size=lead)}, batch_size=lead)

        def action(self, a):
            return a * self.action_scale + self.action_offset if self.unnorm else a

    class Direct(Acting):
        def forward(self, *obs):
            return self.action(self.net.act(self.observation(obs)))

    class Recurrent(Acting):
        def __init__(self, *a, lstm: bool):
            super().__init__(*a, window=False)
            self.lstm = lstm

        def forward(self, *inputs):
            n = len(self.keys)
            state = (inputs[n], inputs[n + 1]) if self.lstm else inputs[n]
            action, state = self.net.forward_step(self.observation(inputs[:n]), state)
            return (self.action(action), *state) if self.lstm else (self.action(action), state)

    class Chunk(Acting):
        def __init__(self, *a, start: int, horizon: int, diffusion: bool, window: bool):
            super().__init__(*a, window=window)
            self.start, self.horizon, self.diffusion = start, horizon, diffusion

        def forward(self, *inputs):
            if self.diffusion:
                chunk = self.net.predict_chunk(self.observation(inputs[:-1]), noise=inputs[-1])
            else:
                chunk = self.net.predict_chunk(self.observation(inputs))
            return self.action(chunk[:, self.start:self.start + self.horizon])

    return Direct, Recurrent, Chunk


def input_dtype(modality: str) -> str:
    """What an observation of ``modality`` is fed as: rgb images ``uint8`` (the encoder scales them), else float32."""
    return "uint8" if modality == "rgb" else "float32"


def acting_module(policy, batch: int = 1):
    """``(module, example inputs, manifest entries)`` for a :class:`~modmimic.policy.RolloutPolicy`'s acting path.
    Raises :class:`ExportError` for acting paths that do not export."""
    import numpy as np
    import torch

    algo = policy.policy
    path = algo.act_path
    name = type(path).__name__
    if algo.goal_shapes:
        raise ExportError(f"recipe {algo.recipe_name!r} is goal-conditioned (goal keys {sorted(algo.goal_shapes)}); "
                          "exporting goal-conditioned policies is not supported yet")
    if policy._segments is not None:
        raise ExportError(f"recipe {algo.recipe_name!r} converts rot_6d actions when acting "
                          "(train.action_config format: rot_6d); exporting that conversion is not supported yet")
    from modmimic.components.nets.core import encoder_spec

    spec = (encoder_spec(plain_config(algo.config.observation)) if "observation" in algo.config else None) or {}
    mods = spec.get("modalities") or {}
    keys = sorted(algo.obs_shapes)
    stats = {}
    for k, st in (policy.obs_normalization_stats or {}).items():
        if k in algo.obs_shapes:
            stats[k] = (np.asarray(st["offset"], np.float32).reshape(-1),
                        np.asarray(st["scale"], np.float32).reshape(-1))
    Direct, Recurrent, Chunk = _build(policy)
    net = path.nets[path.net] if hasattr(path, "net") else None
    ac = int(algo.ac_dim)
    common = (net, keys, stats, policy._affine)
    info: dict = {"acting": None}

    def obs_inputs(lead):
        return [{"name": k, "shape": [*lead, *algo.obs_shapes[k]], "dtype": input_dtype(mods.get(k, "low_dim"))}
                for k in keys]

    if name == "Direct":
        module = Direct(*common, window=False)
        inputs, outputs = obs_inputs([batch]), [{"name": "action", "shape": [batch, ac], "dtype": "float32"}]
        info["acting"] = "direct"
    elif name == "Recurrent":
        if path.open_loop:
            raise ExportError("open-loop BC-RNN (algo.rnn.open_loop=true) is not exported yet")
        h = net.initial_state(batch)
        lstm = isinstance(h, tuple)
        module = Recurrent(*common, lstm=lstm)
        sshape = list((h[0] if lstm else h).shape)
        states = ["h", "c"] if lstm else ["h"]
        inputs = obs_inputs([batch]) + [{"name": s, "shape": sshape, "dtype": "float32"} for s in states]
        outputs = [{"name": "action", "shape": [batch, ac], "dtype": "float32"}] + [
            {"name": f"{s}_out", "shape": sshape, "dtype": "float32"} for s in states]
        info["acting"] = "recurrent"
        info["recurrent"] = {"horizon": path.horizon, "state": states, "state_shape": sshape,
                             "reset": "zeros at an episode start and every `horizon` steps; else the returned state"}
    elif name in ("Chunked", "Context"):
        if getattr(path, "net_args", None):
            raise ExportError(f"chunked acting that reads other networks besides {path.net!r} "
                              f"({', '.join(sorted(path.net_args.values()))}; e.g. VQ-BeT) is not exported yet")
        window = path.To > 1
        diffusion = hasattr(net, "schedule")
        module = Chunk(*common, start=path.start, horizon=path.Ta, diffusion=diffusion, window=window)
        lead = [batch, path.To] if window else [batch]
        inputs = obs_inputs(lead)
        info["acting"] = "chunked"
        info["chunking"] = {"obs_horizon": path.To, "action_horizon": path.Ta, "start": path.start,
                            "temporal_ensemble": path.temporal_ensemble, "ensemble_k": path.ensemble_k,
                            "how": ("call every step; the chunk called j steps ago proposes its action j; act with "
                                    "the mean of the proposals weighted exp(-k * i), i = 0 the oldest"
                                    if path.temporal_ensemble else
                                    "execute the returned actions one per step, then call again")}
        if diffusion:
            s = net.schedule
            shape = [1 + s.noise_draws(), batch, net.prediction_horizon, ac]
            inputs.append({"name": "noise", "shape": shape, "dtype": "float32"})
            info["diffusion"] = {"sampler": s.sampler, "timesteps": s.timesteps(), "noise_shape": shape,
                                 "noise": "standard normal: the initial sample, then one draw per DDPM step t > 0"}
        outputs = [{"name": "actions", "shape": [batch, path.Ta, ac], "dtype": "float32"}]
    else:
        raise ExportError(f"recipe {algo.recipe_name!r} acts with {name} ({algo.config.act.get('fn')}), which is "
                          "not exported (direct, recurrent and chunked acting paths are)")
    module.eval()
    gen = torch.Generator().manual_seed(0)
    example = []
    for inp in inputs:
        if inp["dtype"] == "uint8":
            example.append(torch.randint(0, 256, inp["shape"], generator=gen, dtype=torch.uint8))
        elif inp["name"] in ("h", "c"):
            example.append(torch.zeros(inp["shape"]))
        else:
            example.append(torch.randn(inp["shape"], generator=gen))
    return module, example, {"inputs": inputs, "outputs": outputs, **info}


def plain_config(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node


# --- writing -----------------------------------------------------------------------------------------------

def write_export(module, example, fmt: str, path: str, opset: int = 18) -> None:
    import warnings

    import torch

    names_in = None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            traced = torch.jit.trace(module, tuple(example), check_trace=False, strict=False)
            torch.jit.save(traced, path)
        elif fmt == "pt2":
            ep = torch.export.export(module, tuple(example), strict=False)
            torch.export.save(ep, path)
        elif fmt == "onnx":
            names_in = getattr(module, "_input_names", None)
            prog = torch.onnx.export(module, tuple(example), dynamo=True, opset_version=opset,
                                     input_names=names_in, output_names=getattr(module, "_output_names", None),
                                     verbose=False)
            prog.save(path, external_data=False)
        else:
            raise ArgumentError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def export(checkpoint: str, fmt: str, out: str, batch: int = 1, overwrite: bool = False, opset: int = 18,
           trusted_modules=None) -> dict:
    """Export ``checkpoint``'s acting path to ``out/<policy file>`` in ``fmt`` and write ``out/manifest.json``;
    returns the manifest."""
    import numpy as np

    from modmimic.io import atomic_write_text
    from modmimic.policy import policy_from_checkpoint

    if fmt not in FORMATS:
        raise ArgumentError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch < 1:
        raise ArgumentError(f"batch must be a positive integer, got {batch}")
    target, manifest_path = os.path.join(out, FORMATS[fmt]), os.path.join(out, MANIFEST)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ArgumentError(f"out={out} is a file; give a folder")
    for p in (target, manifest_path):
        if os.path.lexists(p) and not overwrite:
            raise ArgumentError(f"{p} exists; pass overwrite=true to replace it, or choose another out=")
    policy, ckpt = policy_from_checkpoint(ckpt_path=checkpoint, trusted_modules=trusted_modules)
    if policy.multi_task:
        from modmimic.config import ConfigError

        raise ConfigError(f"{checkpoint}: exporting a multi-task policy (task.conditioning="
                          f"{policy.task_vocab.conditioning}) is not supported yet; serve it with python -m "
                          "modmimic.serve (reset with tasks=...) or act in-process")
    module, example, info = acting_module(policy, batch)
    names = [i["name"] for i in info["inputs"]]
    module._input_names, module._output_names = names, [o["name"] for o in info["outputs"]]
    os.makedirs(out, exist_ok=True)
    stem, ext = os.path.splitext(target)
    tmp = f"{stem}.tmp{ext}"  # torch.export wants the .pt2 ending
    try:
        write_export(module, example, fmt, tmp, opset)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    algo = policy.policy
    stats = policy.obs_normalization_stats or {}
    manifest = {
        "format": fmt, "file": FORMATS[fmt], "modmimic_export_version": 1,
        "checkpoint": os.path.abspath(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
        "recipe": algo.recipe_name, "algo_name": algo.algo_name, "batch": batch,
        "obs_keys": sorted(algo.obs_shapes), "obs_shapes": {k: list(v) for k, v in sorted(algo.obs_shapes.items())},
        "action_dim": int(algo.ac_dim), "action_keys": policy.action_keys,
        "control_rate_hz": control_rate(ckpt),
        "normalization": {
            "observation": {k: {"offset": np.asarray(v["offset"]).reshape(-1).tolist(),
                                "scale": np.asarray(v["scale"]).reshape(-1).tolist()}
                            for k, v in sorted(stats.items()) if k in algo.obs_shapes},
            "action": None if policy._affine is None else {"offset": policy._affine[0].tolist(),
                                                            "scale": policy._affine[1].tolist()},
            "applied": "inside the exported module: feed raw observations, get environment actions"},
        **info,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return manifest


def control_rate(ckpt: dict):
    """The environment's control frequency from the checkpoint's env metadata (robosuite ``control_freq``), or
    None when it does not say."""
    kw = ((ckpt.get("env_metadata") or {}).get("env_kwargs") or {})
    rate = kw.get("control_freq")
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None


# --- CLI ---------------------------------------------------------------------------------------------------------

def usage() -> str:
    return usage_text(PROG, "checkpoint=<path.pth> format=torchscript|onnx|pt2 out=<dir> [key=value ...]",
                      "Export a policy's acting path (normalization, encoders, network, action un-normalization) as "
                      "a module that runs without modmimic, with a manifest.json.", ARGS,
                      "0 written, 1 exporter failure, 2 bad input, 130 interrupted.")


def report(e: BaseException) -> int:
    from modmimic.config import ConfigError
    from modmimic.policy import CheckpointError

    return cli_report(e, PROG, [(CheckpointError, "checkpoint error"), (ExportError, "cannot export"),
                                (ConfigError, "bad input")], failure="export failed")


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, usage, run, report)


def run(argv: list[str]) -> int:
    a = parse_kv(argv, ARGS, PROG)
    if not a["checkpoint"] or not a["out"]:
        raise ArgumentError("checkpoint=<path.pth> and out=<dir> are required")
    m = export(a["checkpoint"], a["format"], a["out"], batch=a["batch"], overwrite=a["overwrite"],
               opset=a["opset"])
    print(f"{PROG}: wrote {os.path.join(a['out'], m['file'])} ({m['format']}, {m['acting']} acting, recipe "
          f"{m['recipe']}) and {MANIFEST}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
