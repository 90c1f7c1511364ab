"""``python -m modmimic.report``: mean ± std over seeds of final and best success per setting; sweeps record their
jobs; the parallel (joblib) launcher makes one run directory per job (skipped when the plugin is not installed)."""
import json
import math
import os

import pytest

from modmimic import report


def make_run(root, name, success_by_epoch, seed, lr, env="PointReach"):
    run = root / name
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text(f"train:\n  seed: {seed}\n  lr: {lr}\nexperiment:\n  name: {name}\n")
    with open(run / "logs" / "metrics.jsonl", "w") as f:
        for epoch in range(1, 5):
            rec = {"epoch": epoch, "Train/Loss": 1.0 / epoch}
            if epoch in success_by_epoch:
                rec[f"Rollout/Success_Rate/{env}"] = success_by_epoch[epoch]
            f.write(json.dumps(rec) + "\n")
    return str(run)


def sweep(tmp_path):
    """2 settings x 2 seeds; one job of setting lr=0.1 failed (no run directory)."""
    runs = tmp_path / "runs"
    jobs = tmp_path / "multirun" / "jobs"
    jobs.mkdir(parents=True)
    specs = [("a", 0, 0.01, {2: 0.2, 4: 0.6}), ("b", 1, 0.01, {2: 0.8, 4: 0.4}),
             ("c", 0, 0.1, {2: 0.5, 4: 1.0}), (None, 1, 0.1, None)]
    for i, (name, seed, lr, succ) in enumerate(specs):
        run = make_run(runs, name, succ, seed, lr) if name else None
        (jobs / f"{i}.json").write_text(json.dumps({"num": i, "overrides": [f"train.seed={seed}", f"lr={lr}"],
                                                    "run_dir": run}))
    return tmp_path / "multirun", runs


def test_report_of_a_recorded_sweep(tmp_path):
    folder, _ = sweep(tmp_path)
    rows = {r["setting"]: r for r in report.summarize_sweep(str(folder))}
    assert list(rows) == ["lr=0.01", "lr=0.1"]
    a = rows["lr=0.01"]
    assert a["runs"] == 2 and a["failed"] == 0
    assert a["final_mean"] == pytest.approx(0.5) and a["final_std"] == pytest.approx(0.1)  # finals 0.6, 0.4
    assert a["best_mean"] == pytest.approx(0.7) and a["best_std"] == pytest.approx(0.1)  # bests 0.6, 0.8
    b = rows["lr=0.1"]
    assert (b["runs"], b["failed"], b["final_mean"], b["final_std"], b["best_mean"]) == (1, 1, 1.0, 0.0, 1.0)
    table = report.format_table(list(rows.values()))
    assert "lr=0.01  2             0.500 ± 0.100  0.700 ± 0.100" in table
    assert "1 (1 failed)" in table


def test_report_of_run_directories_without_job_records(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "x", {4: 1.0}, 0, 0.5)
    make_run(runs, "y", {4: 0.0}, 1, 0.5)
    make_run(runs, "z", {3: 0.5}, 0, 0.7)
    make_run(runs, "w", {}, 1, 0.7)  # no rollout: counted, no success numbers
    assert report.main([str(runs)]) == 0
    out = capsys.readouterr().out
    assert "train.lr=0.5  2     0.500 ± 0.500  0.500 ± 0.500" in out
    assert "train.lr=0.7  2     0.500 ± 0.000  0.500 ± 0.000" in out
    assert report.main([str(tmp_path / "empty_nothing")]) == 2


def test_report_json_and_nan_when_no_rollouts(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "x", {}, 0, 0.5)
    assert report.main([str(runs), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["runs"] == 1 and math.isnan(row["final_mean"])


def _sweep_cli(reach_hdf5, tmp_path, tiny, *launcher):
    from modmimic.train import main

    args = ["-m", *launcher, f"dataset={reach_hdf5}", f"train.output_dir={tmp_path}", "train.batch_size=8",
            "train.num_epochs=2", "experiment.epoch_every_n_steps=2", "experiment.logging.log_tb=false",
            "experiment.rollout.rate=1", "experiment.rollout.n=2", "experiment.rollout.horizon=5",
            "experiment.render_video=false", "train.seed=0,1", "algo.optim_params.policy.learning_rate.initial=0.01,0.001",
            *[o for o in tiny("bc") if not o.startswith("experiment.rollout.enabled")]]
    assert main(args) == 0
    (sweep_dir,) = os.listdir(tmp_path / "multirun")
    folder = tmp_path / "multirun" / sweep_dir
    jobs = [json.loads((folder / "jobs" / f).read_text()) for f in sorted(os.listdir(folder / "jobs"))]
    assert len(jobs) == 4 and len({j["run_dir"] for j in jobs}) == 4 and all(os.path.isdir(j["run_dir"]) for j in jobs)
    rows = {r["setting"]: r for r in report.summarize_sweep(str(folder))}
    assert set(rows) == {"algo.optim_params.policy.learning_rate.initial=0.01",
                         "algo.optim_params.policy.learning_rate.initial=0.001"}
    for setting, row in rows.items():
        mine = [j["run_dir"] for j in jobs if setting in j["overrides"]]
        finals = [report.success_series(r)[-1][1] for r in mine]
        assert row["runs"] == 2 and row["final_mean"] == pytest.approx(sum(finals) / 2)
    return jobs


@pytest.mark.slow
def test_sweep_records_jobs_and_reports(reach_hdf5, tmp_path, tiny):
    _sweep_cli(reach_hdf5, tmp_path, tiny)


def test_joblib_launcher_runs_jobs_in_parallel(reach_hdf5, tmp_path, tiny):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    _sweep_cli(reach_hdf5, tmp_path, tiny, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
