"""The learning report's bookkeeping (benchmarks/learning_report.py): which run a cell's result comes from, and
the rendered table's pooled counts and intervals (the training itself is what the report measures, not tested)."""
import importlib.util
import json
import os
import sys

import pytest

from modmimic.rollout import wilson_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("learning_report", os.path.join(ROOT, "benchmarks",
                                                                                  "learning_report.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def write_run(root, stamp, rates, steps_per_eval=100):
    logs = os.path.join(root, "test", stamp, "logs")
    os.makedirs(logs)
    with open(os.path.join(logs, "metrics.jsonl"), "w") as f:
        for i, r in enumerate(rates, 1):
            f.write(json.dumps({"epoch": i, "step": i * steps_per_eval, "Timing_Stats/Train_Epoch": 0.5,
                                "Rollout/Success_Rate/Lift": r}) + "\n")
    return os.path.dirname(logs)


def test_result_comes_from_the_newest_run(report, tmp_path):
    write_run(tmp_path, "20261129205941", [0.9, 0.1])          # an interrupted earlier attempt
    newest = write_run(tmp_path, "20261129215746", [0.2, 0.6, 0.4])
    assert report.newest_run(str(tmp_path)) == newest
    cell = report.Cell("lift", "bc_rnn")
    r = report.result_of(cell, 1, 50, newest, 12.0, [])
    assert r["evals"] == [(1, 100, 0.2), (2, 200, 0.6), (3, 300, 0.4)]
    assert (r["last"], r["best"], r["steps"], r["train_s"]) == (0.4, 0.6, 300, 90.0)


def test_render_pools_the_last_evaluations(report, tmp_path):
    cell = report.CELLS[0]
    os.makedirs(tmp_path / "results")
    for seed, (last, best) in enumerate([(0.98, 1.0), (0.9, 0.94), (1.0, 1.0)]):
        res = {"cell": cell.name, "seed": seed, "episodes": 50, "last": last, "best": best, "steps": 2000,
               "train_s": 40.0, "wall_s": 400.0}
        (tmp_path / "results" / f"{cell.name}__seed{seed}.json").write_text(json.dumps(res))
    (row,) = [ln for ln in report.render(str(tmp_path)).splitlines() if ln.startswith(f"| {cell.dataset} ")]
    lo, hi = wilson_interval(144, 150)   # 49 + 45 + 50
    assert f"144/150 [{lo:.2f}, {hi:.2f}]" in row
    assert "0.96 ± 0.05 (0.98, 0.90, 1.00)" in row and "0.98 ± 0.03 (1.00, 0.94, 1.00)" in row
    assert "| 40 s | 400 s |" in row


def test_a_mixed_dataset_is_generated_with_its_mix(report, tmp_path, monkeypatch):
    """The report's second mixed-quality set is `demos generate ... quality=mixed mix=hard`; the first names no mix."""
    calls = []
    monkeypatch.setattr(report.subprocess, "run", lambda cmd, check: calls.append(cmd[3:]))
    path = report.ensure_dataset(report.DATASETS["lift_hard"], str(tmp_path))
    assert path == str(tmp_path / "data" / "lift_hard.hdf5")
    report.ensure_dataset(report.DATASETS["lift_mixed"], str(tmp_path))
    out = str(tmp_path / "data")
    assert calls == [["generate", "task=Lift", "n=200", f"out={out}/lift_hard.hdf5", "quality=mixed", "mix=hard"],
                     ["generate", "task=Lift", "n=200", f"out={out}/lift_mixed.hdf5", "quality=mixed"]]
