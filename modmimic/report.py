"""``python -m modmimic.report <sweep dir> [--json]`` — a results table of a hydra sweep across seeds and values.

A sweep (``python -m modmimic.train -m train.seed=0,1,2 algo.optim_params.policy.learning_rate.initial=1e-3,1e-4``,
with any launcher) records each job in ``<train.output_dir>/multirun/<timestamp>/jobs/<n>.json``: its overrides and
its run directory. Runs that differ only in ``train.seed`` form one setting; per setting the table shows the number
of runs, and the mean +- std (population std over the runs) of the final and of the best rollout success rate.
A run's success rate at an epoch is its ``Rollout/Success_Rate/<env>`` in ``logs/metrics.jsonl`` (averaged over the
environments when there are several); "final" is the last epoch with a rollout, "best" the highest.

Without ``jobs/`` (e.g. a folder of runs made by hand), every run directory below the given folder (one holding
``config.yaml`` and ``logs/metrics.jsonl``) counts, and a setting is the config values in which runs differ
(``train.seed`` and bookkeeping such as ``experiment.name`` excepted). Exit status 2 when nothing is found.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from modmimic.stored import StoredFileError, load_yaml, loads_json, read_text

PROG = "modmimic.report"
SEED_KEYS = ("train.seed",)
IGNORED = ("train.seed", "experiment.name", "train.output_dir", "resume", "resume_dir", "train.stop_after_epoch")


class ReportError(ValueError):
    pass


def success_series(run_dir: str) -> list[tuple[int, float]]:
    """``[(epoch, success rate)]`` of a run (mean over environments at each epoch with a rollout)."""
    path = os.path.join(run_dir, "logs", "metrics.jsonl")
    out = []
    try:
        lines = read_text(path, "metrics log").splitlines()
    except StoredFileError as e:
        raise ReportError(str(e)) from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = loads_json(line, f"{path} line {i + 1}")
        except StoredFileError as e:
            raise ReportError(str(e)) from None
        if not isinstance(rec, dict):
            raise ReportError(f"{path}: line {i + 1} is not a JSON object")
        vals = [v for k, v in rec.items() if k.startswith("Rollout/Success_Rate/") and isinstance(v, (int, float))
                and math.isfinite(v)]
        if vals:
            out.append((int(rec.get("epoch", i + 1)), sum(vals) / len(vals)))
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def _flat(node, prefix="") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True) if isinstance(node, (list, dict)) else node}


def sweep_runs(folder: str) -> list[tuple[str, str | None]]:
    """``[(setting, run dir or None)]`` of a sweep folder (see the module docstring)."""
    jobs_dir = os.path.join(folder, "jobs")
    if os.path.isdir(jobs_dir):
        jobs = []
        for name in sorted(os.listdir(jobs_dir), key=lambda n: (len(n), n)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(jobs_dir, name)
            job = loads_json(read_text(path, "sweep job record"), path)
            if not (isinstance(job, dict) and isinstance(job.get("overrides", []), list)
                    and all(isinstance(o, str) for o in job.get("overrides", []))
                    and isinstance(job.get("run_dir"), (str, type(None)))):
                raise ReportError(f"{path} is not a sweep job record ({{num, overrides: [str], run_dir: str or null}})")
            jobs.append(job)
        parsed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in j.get("overrides", [])) for j in jobs]
        keys = list(dict.fromkeys(k for p in parsed for k in p))
        # the setting: the swept keys (values that differ between jobs), seeds aside; constant overrides are common
        varying = [k for k in keys if k.lstrip("+~") not in SEED_KEYS and len({p.get(k) for p in parsed}) > 1]
        out = []
        for job, p in zip(jobs, parsed):
            run = job.get("run_dir")
            if run is not None and not os.path.isabs(run):
                run = os.path.normpath(os.path.join(os.getcwd(), run))
            out.append((" ".join(f"{k}={p[k]}" for k in varying if k in p) or "(defaults)", run))
        return out
    runs = sorted(os.path.dirname(os.path.dirname(os.path.join(root, f)))
                  for root, _, files in os.walk(folder) for f in files
                  if f == "metrics.jsonl" and os.path.basename(root) == "logs"
                  and os.path.isfile(os.path.join(os.path.dirname(root), "config.yaml")))
    configs = {r: _flat(load_yaml(os.path.join(r, "config.yaml"), "run config")) for r in runs}
    keys = sorted({k for c in configs.values() for k in c if k not in IGNORED})
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
    return [(" ".join(f"{k}={configs[r].get(k)}" for k in varying) or "(defaults)", r) for r in runs]


def summarize_sweep(folder: str) -> list[dict]:
    """One row per setting: ``setting``, ``runs``, ``failed``, ``final_mean``, ``final_std``, ``best_mean``,
    ``best_std`` (success rates; NaN when no run of the setting had a rollout)."""
    if not os.path.isdir(folder):
        raise ReportError(f"{folder} is not a directory")
    rows: dict = {}
    for setting, run in sweep_runs(folder):
        row = rows.setdefault(setting, {"setting": setting, "runs": 0, "failed": 0, "final": [], "best": []})
        if run is None or not os.path.isdir(run):
            row["failed"] += 1
            continue
        row["runs"] += 1
        series = success_series(run)
        if series:
            row["final"].append(series[-1][1])
            row["best"].append(max(v for _, v in series))
    if not rows:
        raise ReportError(f"{folder}: no sweep jobs (jobs/*.json) and no run directories (config.yaml + "
                          "logs/metrics.jsonl) below it")
    out = []
    for row in rows.values():
        fm, fs = _mean_std(row.pop("final"))
        bm, bs = _mean_std(row.pop("best"))
        out.append({**row, "final_mean": fm, "final_std": fs, "best_mean": bm, "best_std": bs})
    return out


def format_table(rows: list[dict]) -> str:
    def ms(m, s):
        return "n/a" if math.isnan(m) else f"{m:.3f} ± {s:.3f}"

    head = ("setting", "runs", "final success", "best success")
    body = [(r["setting"], str(r["runs"]) + (f" ({r['failed']} failed)" if r["failed"] else ""),
             ms(r["final_mean"], r["final_std"]), ms(r["best_mean"], r["best_std"])) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(4)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description="Results table of a modmimic sweep: mean ± "
                                 "std over seeds of the final and best rollout success rate per setting.")
    ap.add_argument("folder", help="the sweep directory (<train.output_dir>/multirun/<timestamp>) or a folder of runs")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    try:
        rows = summarize_sweep(args.folder)
    except (ReportError, StoredFileError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
