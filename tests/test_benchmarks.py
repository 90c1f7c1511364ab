"""The benchmark scripts run and print well-formed records (a smoke run: one round of one step; nothing is timed
or compared here — speed is measured by running the benchmarks themselves)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(script: str, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, script, "--steps", "1", "--repeats", "1", *args],
                         cwd=os.path.join(ROOT, "benchmarks"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("script,args,expected", [
    ("bench_train_step.py", ["--only", "sampler,bc"], {"sampler/[100,10]", "sampler/[100,1]",
                                                        "modmimic/bc_mlp1024x2_b100", "torch/bc_mlp1024x2_b100"}),
    ("bench_offline_rl.py", ["--only", "iql,td3_bc"], {"modmimic/iql_300x400_b100", "torch/iql_300x400_b100",
                                                       "modmimic/td3_bc_256x256_b256", "torch/td3_bc_256x256_b256"}),
])
def test_benchmark_runs(script, args, expected):
    recs = run_bench(script, *args)
    assert {r["workload"] for r in recs} == expected
    for r in recs:
        assert all(v > 0 for k, v in r.items() if k in ("steps_per_s", "ms_per_step", "ratio_vs_torch", "ms_per_batch"))
        if r["workload"].startswith("torch/"):
            assert r["ratio_vs_torch"] == 1.0


def test_inference_benchmark_runs():
    out = subprocess.run([sys.executable, "bench_inference.py", "--recipes", "bc_rnn", "--calls", "3", "--seconds",
                          "0.2"], cwd=os.path.join(ROOT, "benchmarks"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    recs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {(r["path"], r["what"]) for r in recs} >= {("inproc", "action"), ("server", "action"),
                                                      ("server", "clients=16"), ("torchscript", "action")}
    assert all(r.get("p50_ms", 1) > 0 and r.get("requests_per_s", 1) > 0 for r in recs)
    assert "| bc_rnn |" in out.stdout
