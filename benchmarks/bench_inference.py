"""Acting latency: one action and one chunk, in-process, through the policy server on loopback, and exported; and
requests/s of 1, 4 and 16 concurrent server clients.

Per recipe (untrained networks of the recipe's default size unless the name says ``small``; Lift-like low-dim keys,
7-D actions):

* ``inproc``: ``RolloutPolicy.__call__`` on one observation. ``action``: steady-state calls of an episode (for
  chunking recipes most calls pop a queued action; ACT re-plans every step, temporal ensembling); ``chunk``: a call
  that re-plans (``start_episode`` before it, not timed);
* ``server``: the same through ``RemotePolicy`` to ``python -m modmimic.serve`` in this process (loopback, msgpack
  encode/decode and the websocket included);
* ``torchscript`` / ``onnx``: one call of the exported module (one action, or one chunk);
* ``clients=N``: N threads, each its own ``RemotePolicy`` session, calling for ``--seconds``; total requests/s.

Prints one JSON line per measurement (``p50_ms``, ``p99_ms`` or ``requests_per_s``) and a Markdown table at the end.

Usage: ``python benchmarks/bench_inference.py [--recipes bc,bc_rnn,dp_small,dp,act] [--calls 200] [--seconds 3]
[--threads 1] [--device cpu] [--formats torchscript,onnx]``. The default-size Diffusion Policy (DDPM 100 steps of
robomimic's UNet) takes seconds per chunk on a CPU: time it with few calls (``--recipes dp --calls 20``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ACT, OBS  # noqa: E402

RECIPES = {
    "bc": ("bc", []),
    "bc_rnn": ("bc_rnn", []),
    "dp_small": ("diffusion_policy", ["algo.unet.down_dims=[64,128]", "algo.unet.diffusion_step_embed_dim=64",
                                      "algo.ddpm.enabled=false", "algo.ddim.enabled=true"]),  # DDIM 10 steps
    "dp": ("diffusion_policy", []),  # robomimic's default UNet, DDPM 100 steps
    "act": ("act", []),
}


def make_checkpoint(recipe: str, overrides: list, path: str, device: str) -> str:
    from modmimic.algo import algo_factory
    from modmimic.config import compose
    from modmimic.policy import make_checkpoint as mk, save_checkpoint

    cfg = compose(recipe, [f"observation.modalities.obs.low_dim=[{','.join(OBS)}]", *overrides])
    torch.manual_seed(0)
    algo = algo_factory(cfg.algo_name, cfg, {k: (d,) for k, d in OBS.items()}, ACT)
    stats = {k: {"offset": [[0.1] * d], "scale": [[2.0] * d]} for k, d in OBS.items()}
    act = {"actions": {"offset": [[0.0] * ACT], "scale": [[1.0] * ACT]}}
    save_checkpoint(path, mk(algo, obs_normalization_stats=stats, action_normalization_stats=act))
    return path


def percentiles(times: list[float]) -> dict:
    a = np.asarray(times) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "calls": len(a)}


def time_calls(fn, n: int, before=None) -> list[float]:
    out = []
    for _ in range(n):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def emit(rows: list, **rec) -> None:
    print(json.dumps(rec), flush=True)
    rows.append(rec)


def bench_recipe(name: str, calls: int, seconds: float, device: str, folder: str, rows: list,
                 formats=("torchscript", "onnx")) -> None:
    from modmimic.client import RemotePolicy
    from modmimic.export import acting_module, write_export
    from modmimic.policy import policy_from_checkpoint
    from modmimic.serve import server_from_checkpoint

    recipe, ov = RECIPES[name]
    ckpt = make_checkpoint(recipe, ov, os.path.join(folder, f"{name}.pth"), device)
    policy, _ = policy_from_checkpoint(device=device, ckpt_path=ckpt)
    rng = np.random.default_rng(0)
    obs = {k: rng.standard_normal(d).astype(np.float32) for k, d in OBS.items()}
    chunked = hasattr(policy.acting_path, "Ta")
    n_chunk = max(5, calls // 10) if name == "dp" else calls
    n_action = max(10, calls // 4) if name == "dp" else calls

    def measure(kind, pol):
        pol.start_episode()
        for _ in range(3):
            pol(obs)
        emit(rows, recipe=name, path=kind, what="action", **percentiles(time_calls(lambda: pol(obs), n_action)))
        if chunked:
            emit(rows, recipe=name, path=kind, what="chunk",
                 **percentiles(time_calls(lambda: pol(obs), n_chunk, before=pol.start_episode)))

    measure("inproc", policy)
    server = server_from_checkpoint(ckpt, port=0, device=device).start()
    try:
        remote = RemotePolicy(server.url)
        measure("server", remote)
        remote.close()
        for clients in (1, 4, 16):
            counts = [0] * clients
            stop = threading.Event()
            ready = threading.Barrier(clients + 1)

            def client(i):
                p = RemotePolicy(server.url)
                p.start_episode()
                ready.wait()
                while not stop.is_set():
                    p(obs)
                    counts[i] += 1
                p.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            ready.wait()
            t0 = time.perf_counter()
            time.sleep(seconds)
            stop.set()
            for t in threads:
                t.join()
            emit(rows, recipe=name, path="server", what=f"clients={clients}",
                 requests_per_s=round(sum(counts) / (time.perf_counter() - t0), 1))
    finally:
        server.stop()
    module, example, info = acting_module(policy, 1)
    what = "chunk" if chunked else "action"
    n = n_chunk if chunked else calls
    if "onnx" in formats:
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            formats = [f for f in formats if f != "onnx"]
    for fmt in formats:
        path = os.path.join(folder, f"{name}.{fmt}")
        write_export(module, example, fmt, path)
        if fmt == "torchscript":
            m = torch.jit.load(path)
            args = [e.to(device) for e in example]
            m(*args)

            def call():
                with torch.no_grad():
                    m(*args)
        else:
            import onnxruntime as ort

            ort.set_default_logger_severity(3)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            sess_opts = {i.name: e.numpy() for i, e in zip(sess.get_inputs(), example)}
            sess.run(None, sess_opts)

            def call():
                sess.run(None, sess_opts)
        emit(rows, recipe=name, path=fmt, what=what, **percentiles(time_calls(call, n)))


def table(rows: list) -> str:
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    lines = ["| recipe | in-process action | in-process chunk | server action | server chunk | TorchScript | ONNX | "
             "req/s 1 / 4 / 16 clients |", "|---|---|---|---|---|---|---|---|"]

    def cell(recipe, path, what):
        r = [x for x in rows if x["recipe"] == recipe and x["path"] == path and x["what"] == what]
        return f"{r[0]['p50_ms']:.2f} / {r[0]['p99_ms']:.2f}" if r else "-"

    for rc in recipes:
        exp = {p: next((cell(rc, p, w) for w in ("chunk", "action") if cell(rc, p, w) != "-"), "-")
               for p in ("torchscript", "onnx")}
        rps = " / ".join(str(next((x["requests_per_s"] for x in rows if x["recipe"] == rc
                                   and x["what"] == f"clients={c}"), "-")) for c in (1, 4, 16))
        lines.append(f"| {rc} | {cell(rc, 'inproc', 'action')} | {cell(rc, 'inproc', 'chunk')} | "
                     f"{cell(rc, 'server', 'action')} | {cell(rc, 'server', 'chunk')} | {exp['torchscript']} | "
                     f"{exp['onnx']} | {rps} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--formats", default="torchscript,onnx", help="export formats to time (empty: none)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows: list = []
    with tempfile.TemporaryDirectory() as folder:
        for name in a.recipes.split(","):
            bench_recipe(name, a.calls, a.seconds, a.device, folder, rows,
                         [f for f in a.formats.split(",") if f])
    print(f"\n{a.device}, {a.threads} thread(s); p50 / p99 ms\n" + table(rows))


if __name__ == "__main__":
    main()
